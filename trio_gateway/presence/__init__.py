"""Presence (who is subscribed to a presence topic, across instances) and typing indicators.

store.py is the seam between the local tracker and where shares live (memory, or Redis in
redis_store.py); tracker.py follows this instance's connections and tells its observers what
changed; typing.py de-duplicates typing indicators; handlers.py plugs both into the message
registry, the hub's subscription watch and the lifecycle; api.py serves the HTTP queries.
"""
