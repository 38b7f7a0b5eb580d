"""A dask dataframe groupby-aggregate over partitions built from pandas.

Run: python examples/dataframe_groupby.py [SCHEDULER_ADDRESS]
"""

import sys

import dask.dataframe as dd
import pandas as pd

from minidist import Client


def main(client):
    frame = pd.DataFrame(
        {
            "city": ["Lyon", "Oslo", "Lima", "Oslo", "Lyon", "Lima", "Oslo", "Lyon"] * 50,
            "sales": list(range(400)),
        }
    )
    sales = dd.from_pandas(frame, npartitions=2)
    summary = sales.groupby("city").sales.agg(["sum", "mean", "count"]).compute()
    for city, row in summary.sort_index().iterrows():
        print(f"{city}: sum={int(row['sum'])} mean={row['mean']:.2f} count={int(row['count'])}")
    big = client.compute(sales[sales.sales > 300].sales.count()).result()
    print("rows with sales above 300:", int(big))


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    with Client(address) if address else Client(n_workers=1, threads_per_worker=2) as client:
        main(client)
