"""redis-py's RedisCluster against shard groups (run by tests/sharding.rs).

    python3 tests/python/sharding_client.py HOST:PORT [HOST:PORT ...]

Writes and reads keys of every group through the seeds it is given, runs a MULTI-free
pipeline, a multi-key command and a script on one slot, and checks that a command on
keys of two slots is refused by the server with CROSSSLOT. Prints "ok <keys>".
"""

import sys

from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterCrossSlotError


def main():
    seeds = [ClusterNode(*addr.rsplit(":", 1)) for addr in sys.argv[1:]]
    client = RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=10)
    keys = [f"py:{i}" for i in range(200)]
    for key in keys:
        assert client.set(key, f"v-{key}"), key
    for key in keys:
        assert client.get(key) == f"v-{key}", key
    owners = {client.keyslot(key) for key in keys}
    assert len(owners) > 100, "keys spread over many slots"
    pipe = client.pipeline()
    for key in keys[:20]:
        pipe.incr(f"{key}:n")
    assert pipe.execute() == [1] * 20
    assert client.mset({"{py}a": "1", "{py}b": "2"})
    assert client.mget(["{py}a", "{py}b"]) == ["1", "2"]
    script = "return redis.call('SET', KEYS[1], ARGV[1])"
    assert client.eval(script, 1, "{py}c", "3") == "OK"
    node = client.get_node_from_key("{py}a")
    try:
        client.execute_command("MSET", "foo", "1", "bar", "2", target_nodes=node)
        raise AssertionError("MSET over two slots was accepted")
    except ClusterCrossSlotError:
        # The server's "CROSSSLOT ..." error reply (redis-py names it by its prefix).
        pass
    print(f"ok {len(keys)}")


if __name__ == "__main__":
    main()
