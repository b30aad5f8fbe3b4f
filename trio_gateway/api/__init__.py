"""The HTTP API: the route table with each route's policy (routes.py), the request and error
types every handler shares (app.py), and the handlers, one module per resource group. Knows
no HTTP framing: transport/http.py parses requests and writes responses."""
