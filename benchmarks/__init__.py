"""The benchmark of the assistant streaming service against its bare loop (`make bench`)."""
