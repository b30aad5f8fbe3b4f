"""Small pure helpers shared by the server and the client library (backoff, exception
groups). Must import nothing of the server: the client library loads this package."""
