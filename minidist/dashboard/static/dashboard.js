/* minidist dashboard: polls the server's JSON and redraws the status page or a worker page.

   status page: GET <prefix>/json/status.json?since=T every POLL_MS -> totals, workers, task stream, progress
   worker page: GET <prefix>/json/worker/<w>.json every POLL_MS  -> facts, task stream, tasks, logs
   The task stream keeps its own buffer; ?since= makes the server send each finished task about once.
   A failed poll shows in the red banner and the last good picture stays. No external resources. */
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const PREFIX = config.prefix || "";
  const POLL_MS = 500;          // the issue asks for updates at least every second
  const STREAM_WINDOW_S = 30;   // the task stream shows at most the last 30 s
  const MAX_STREAM = 5000;      // and at most this many tasks
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const num = (x) => (typeof x === "number" && isFinite(x) ? x : 0);

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  function fmtSeconds(s) {
    if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
    if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
    return `${s.toFixed(2)} s`;
  }

  // one colour per task prefix, shared by the task stream and the progress bars: prefixes take hues a
  // golden angle apart in the order this page first meets them, so the first dozen never look alike
  const colours = new Map();
  function colorFor(prefix) {
    const name = String(prefix);
    if (!colours.has(name)) colours.set(name, `hsl(${(200 + colours.size * 137.508) % 360}, 60%, 48%)`);
    return colours.get(name);
  }

  const workerHref = (ident) => `${PREFIX}/worker/${encodeURIComponent(ident)}`;

  function setError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  async function fetchJSON(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      const response = await fetch(url, { cache: "no-store", signal: abort.signal });
      let body = null;
      try { body = await response.json(); } catch (e) { /* reported below */ }
      if (!response.ok) {
        throw new Error(body && body.error ? `${response.status}: ${body.error}` : `HTTP ${response.status}`);
      }
      if (body === null) throw new Error("the server sent invalid JSON");
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  // poll url() forever; draw(data) errors are shown like network errors
  function poll(url, draw) {
    async function tick() {
      const started = Date.now();
      try {
        draw(await fetchJSON(url()));
        setError(null);
        $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (e) {
        const why = e.name === "AbortError" ? "the server did not answer within 5 s"
          : e instanceof TypeError && /fetch/i.test(e.message) ? `cannot reach the dashboard server (${e.message})`
          : e.message;
        setError(`Dashboard error: ${why}`);
        $("updated").textContent = "not updated";
      }
      setTimeout(tick, Math.max(0, POLL_MS - (Date.now() - started)));
    }
    tick();
  }

  function cards(items) {
    $("totals").replaceChildren(...items.map(([label, value, cls]) =>
      el("div", { class: "card" }, el("div", { class: "label" }, label),
        el("div", { class: `value ${cls || ""}` }, value))));
  }

  function memBar(memory, limit) {
    const fill = el("div", { class: "fill" });
    let text;
    if (typeof limit === "number" && limit > 0) {
      const frac = Math.min(1, num(memory) / limit);
      fill.style.width = `${(frac * 100).toFixed(1)}%`;
      if (frac > 0.85) fill.classList.add("high"); else if (frac > 0.6) fill.classList.add("warn");
      text = `${fmtBytes(memory)} / ${fmtBytes(limit)} (${(frac * 100).toFixed(0)}%)`;
    } else {
      fill.style.width = "0";
      text = `${fmtBytes(memory)} (no limit)`;
    }
    return el("div", { class: "bar", title: text }, fill, el("span", { class: "text" }, text));
  }

  class TaskStream {
    constructor(container) {
      this.container = container;
      this.entries = new Map();
      this.latest = null;  // the newest stop time seen: the next ?since=
    }

    add(list) {
      for (const t of list || []) {
        this.entries.set(`${t.worker}\u0000${t.thread}\u0000${t.key}\u0000${t.start}`, t);
        if (this.latest === null || num(t.stop) > this.latest) this.latest = num(t.stop);
      }
      for (const id of this.entries.keys()) {  // Map keeps arrival order: drop the oldest first
        if (this.entries.size <= MAX_STREAM) break;
        this.entries.delete(id);
      }
    }

    draw(now, workers) {
      const t1 = now || this.latest || 0;
      for (const [id, t] of this.entries) if (num(t.stop) < t1 - STREAM_WINDOW_S) this.entries.delete(id);
      const tasks = [...this.entries.values()];
      if (!tasks.length) {
        this.container.replaceChildren(el("p", { class: "muted" }, "no finished tasks in the last 30 s"));
        return;
      }
      // one row per (worker, thread), workers in the snapshot's order
      const order = new Map(workers.map((w, i) => [String(w.address), i]));
      const names = new Map(workers.map((w) => [String(w.address), String(w.name ?? w.address)]));
      const rowKeys = new Map();
      for (const t of tasks) rowKeys.set(`${t.worker}\u0000${t.thread}`, [String(t.worker), num(t.thread)]);
      const rows = [...rowKeys.entries()].sort((a, b) => {
        const [wa, ta] = a[1], [wb, tb] = b[1];
        const oa = order.has(wa) ? order.get(wa) : 1e9, ob = order.has(wb) ? order.get(wb) : 1e9;
        return oa - ob || wa.localeCompare(wb) || ta - tb;
      });
      const rowIndex = new Map(rows.map(([key], i) => [key, i]));
      let t0 = Math.min(...tasks.map((t) => num(t.start)));
      t0 = Math.max(t0, t1 - STREAM_WINDOW_S);
      if (t1 - t0 < 1) t0 = t1 - 1;
      const width = Math.max(400, this.container.clientWidth || 900);
      const label = 130, axis = 18;
      const rowH = Math.max(3, Math.min(18, Math.floor(300 / rows.length)));
      const height = rows.length * rowH + axis;
      const plotW = width - label - 8;
      const x = (t) => label + ((t - t0) / (t1 - t0)) * plotW;
      const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
        "aria-label": `task stream: ${tasks.length} tasks` });
      if (rowH >= 9) {
        rows.forEach(([, [w, thread]], i) => root.append(svg("text", { x: 4, y: i * rowH + rowH - 3 },
          `${(names.get(w) || w).slice(0, 16)} #${thread}`)));
      }
      for (const t of tasks) {
        const start = Math.max(num(t.start), t0);
        const row = rowIndex.get(`${t.worker}\u0000${t.thread}`);
        const failed = t.status === "error";
        const rect = svg("rect", {
          x: x(start).toFixed(1), y: row * rowH + 1, height: Math.max(1, rowH - 2),
          width: Math.max(1, x(num(t.stop)) - x(start)).toFixed(1),
          fill: failed ? "#d62828" : colorFor(t.prefix), class: failed ? "task erred" : "task",
        });
        rect.append(svg("title", {}, `${t.key}\n${fmtSeconds(num(t.stop) - num(t.start))} on ` +
          `${names.get(String(t.worker)) || t.worker} thread ${t.thread}${failed ? "\nerred" : ""}`));
        root.append(rect);
      }
      for (let i = 0; i <= 4; i++) {  // time axis, in seconds before now
        const t = t0 + ((t1 - t0) * i) / 4;
        root.append(svg("text", { x: Math.min(x(t), width - 40), y: height - 4 },
          i === 4 ? "now" : `-${(t1 - t).toFixed(1)} s`));
      }
      this.container.replaceChildren(root);
    }
  }

  function drawWorkers(workers) {
    const rows = workers.map((w) => {
      const ident = String(w.address);
      const link = el("a", { href: workerHref(ident) }, String(w.name ?? ident));
      const cell = el("td", {}, link, el("br"), el("code", { class: "muted" }, ident));
      if (w.dashboard) cell.append(" ", el("a", { href: w.dashboard, class: "muted" }, "(own dashboard)"));
      return el("tr", { "data-worker": ident }, cell,
        el("td", { class: w.status === "paused" ? "paused" : "" }, String(w.status ?? "")),
        el("td", { class: "num" }, num(w.nthreads)),
        el("td", { class: "num processing" }, num(w.processing)),
        el("td", { class: "num" }, num(w.executing)),
        el("td", { class: "num" }, num(w.in_memory)),
        el("td", { class: "num" }, `${num(w.cpu).toFixed(0)} %`),
        el("td", {}, memBar(w.memory, w.memory_limit)));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no workers")));
    $("workers").tBodies[0].replaceChildren(...rows);
  }

  function drawProgress(byPrefix) {
    const entries = Object.entries(byPrefix || {});
    if (!entries.length) {
      $("progress").replaceChildren(el("p", { class: "muted" }, "no tasks yet"));
      return;
    }
    $("progress").replaceChildren(...entries.map(([prefix, c]) => {
      const done = num(c.memory) + num(c.released), erred = num(c.erred), running = num(c.processing);
      const total = done + erred + running + num(c.waiting) + num(c.queued);
      const pct = (n) => `${total ? (100 * n) / total : 0}%`;
      const doneBar = el("span", { class: "memory" });
      doneBar.style.background = colorFor(prefix);
      doneBar.style.width = pct(done);
      const erredBar = el("span", { class: "erred" });
      erredBar.style.width = pct(erred);
      const runBar = el("span", { class: "processing" });
      runBar.style.width = pct(running);
      const title = `${prefix}: ${num(c.waiting)} waiting, ${num(c.queued)} queued, ${running} processing, ` +
        `${num(c.memory)} in memory, ${num(c.released)} released, ${erred} erred`;
      return el("div", { class: "progress-row", "data-prefix": prefix, title },
        el("div", { class: "name" }, prefix), el("div", { class: "stack" }, doneBar, erredBar, runBar),
        el("div", { class: "num count" }, `${done} / ${total}`, erred ? el("span", { class: "error" }, ` ${erred} erred`) : ""));
    }));
  }

  function statusPage() {
    const stream = new TaskStream($("stream"));
    $("stream-caption").textContent = `(last ${STREAM_WINDOW_S} s, coloured by task prefix)`;
    const url = () => `${PREFIX}/json/status.json${stream.latest === null ? "" : `?since=${stream.latest}`}`;
    poll(url, (snap) => {
      const cluster = snap.cluster || {}, workers = snap.workers || [];
      const totals = (snap.tasks || {}).totals || {};
      const memory = workers.reduce((s, w) => s + num(w.memory), 0);
      const limit = cluster.memory_limit;
      $("brand").textContent = cluster.name || config.name;
      cards([
        ["Status", String(cluster.status ?? "?"), cluster.status === "closed" ? "error" : ""],
        ["Workers", num(cluster.n_workers)],
        ["Threads", num(cluster.threads)],
        ["Memory", limit ? `${fmtBytes(memory)} / ${fmtBytes(limit)}` : fmtBytes(memory)],
        ["CPU", `${workers.reduce((s, w) => s + num(w.cpu), 0).toFixed(0)} %`],
        ["Waiting", num(totals.waiting) + num(totals.queued)],
        ["Processing", num(totals.processing)],
        ["In memory", num(totals.memory)],
        ["Erred", num(totals.erred), num(totals.erred) ? "error" : ""],
      ]);
      drawWorkers(workers);
      stream.add(snap.task_stream);
      stream.draw(num(snap.time), workers);
      drawProgress((snap.tasks || {}).by_prefix);
    });
  }

  function workerPage() {
    const stream = new TaskStream($("stream"));
    poll(() => `${PREFIX}/json/worker/${encodeURIComponent(config.worker)}.json`, (data) => {
      const w = data.worker || {};
      $("worker-title").textContent = `Worker ${w.name ?? config.worker}`;
      const facts = [
        ["Address", String(w.address ?? "")], ["Status", String(w.status ?? "")],
        ["Threads", num(w.nthreads)], ["Processing", num(w.processing)], ["Executing", num(w.executing)],
        ["In memory", num(w.in_memory)], ["CPU", `${num(w.cpu).toFixed(0)} %`],
        ["PID", w.pid ?? "–"],
      ];
      cards(facts);
      const memCard = el("div", { class: "card", style: "min-width: 20em" },
        el("div", { class: "label" }, "Memory"), memBar(w.memory, w.memory_limit));
      $("totals").append(memCard);
      if (w.dashboard && !config.own_server) $("totals").append(el("div", { class: "card" }, el("a", { href: w.dashboard }, "own dashboard")));
      stream.add(data.task_stream);
      stream.draw(num(data.time), [w]);
      const tasks = (data.tasks || []).slice(0, 500).map((t) => el("tr", {},
        el("td", {}, el("code", {}, String(t.key))), el("td", {}, String(t.prefix ?? "")), el("td", {}, String(t.state ?? ""))));
      if (!tasks.length) tasks.push(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "none")));
      $("tasks").tBodies[0].replaceChildren(...tasks);
      const recent = (data.task_stream || []).slice(-50).reverse().map((t) => el("tr", {},
        el("td", {}, el("code", {}, String(t.key))), el("td", { class: "num" }, num(t.thread)),
        el("td", { class: "num" }, fmtSeconds(num(t.stop) - num(t.start))),
        el("td", { class: t.status === "error" ? "error" : "" }, String(t.status ?? ""))));
      if (!recent.length) recent.push(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none")));
      $("recent").tBodies[0].replaceChildren(...recent);
      const logs = data.logs || "(no log records yet)";
      if ($("logs").textContent !== logs) $("logs").textContent = logs;
    });
  }

  if (config.page === "worker") workerPage(); else statusPage();
})();
