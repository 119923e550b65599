"""Replicas: the router, the shard queues and their spread over live replicas (REDIS_URL).

`replicas.ReplicaSet` runs it, `registry.ShardRegistry` keeps the shared state in Redis and
`placement` decides which replica consumes which shard. README "Running replicas" explains it.
"""
