"""On disk: the data directory's layout, the files of a request, ownership markers,
retention. Nothing of HTTP and nothing of requests' rules."""
