"""Remote access: clients in other processes (TCP/TLS) and clients inside worker processes."""
