"""The sans-IO wire protocol: typed messages, the JSON codec and close codes.

Nothing in this package imports trio or touches a socket; it is tested with plain sync pytest.
"""
