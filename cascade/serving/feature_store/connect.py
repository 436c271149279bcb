"""One redis-py client from ``serving.redis_url``: a single server, a Redis Cluster, or the master that Redis
Sentinel names.

    redis://[user:password@]host:port[/db]            one server (rediss:// for TLS, unix:// for a socket)
    redis://host:port?cluster=true                    a cluster, reached through this node
    redis-cluster://[user:password@]h1:p1[,h2:p2...]  a cluster, through any of these nodes (rediss-cluster://)
    redis-sentinel://[user:password@]s1:p1[,s2:p2...]/service[/db]
                                                      the master of ``service`` as the sentinels name it
                                                      (rediss-sentinel:// for TLS to the data nodes)

Every user's keys share one hash tag, so on a cluster a user's reads, their event script and their guard
keys stay on one node; global keys (the keyspace pointer, the guard's flags) live on whichever node owns
them. Clients fail within the timeout and are never retried by redis-py itself: the caller decides, behind
its circuit breaker. A cluster client refreshes its slot map when a node moves or fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

RedisClient = redis.Redis | RedisCluster
REDIS_CLIENTS = (redis.Redis, RedisCluster)  # for isinstance: a Sentinel's master client is a redis.Redis

CLUSTER_SCHEMES = {"redis-cluster": False, "rediss-cluster": True}  # scheme -> TLS
SENTINEL_SCHEMES = {"redis-sentinel": False, "rediss-sentinel": True}
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RedisAddress:
    """``serving.redis_url`` parsed. ``nodes``: (host, port) of the cluster's startup nodes or the
    sentinels; empty for a single server, reached by ``url``."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str  # a single server's URL (the cluster option removed); the URL as given otherwise
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""  # the Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in CLUSTER_SCHEMES or scheme in SENTINEL_SCHEMES:
            userinfo, _, hosts = parts.netloc.rpartition("@")
            username, password = _credentials(userinfo)
            nodes = tuple(_host_port(node, url) for node in hosts.split(",") if node)
            if not nodes:
                raise ValueError(f"serving.redis_url names no node: {_redacted(url)}")
            if scheme in CLUSTER_SCHEMES:
                return cls("cluster", url, nodes, username=username, password=password,
                           tls=CLUSTER_SCHEMES[scheme])  # fmt: skip
            path = [segment for segment in parts.path.split("/") if segment]
            if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
                raise ValueError(
                    "serving.redis_url of Sentinel is "
                    f"redis-sentinel://host:port[,host:port...]/service[/db]: {_redacted(url)}"
                )
            return cls("sentinel", url, nodes, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                       username, password, SENTINEL_SCHEMES[scheme])  # fmt: skip
        query = parse_qs(parts.query)
        cluster = [value.lower() for value in query.pop("cluster", [])]
        if not cluster:
            return cls("single", url)  # as given: urlunsplit would turn unix:///path into unix:/path
        if cluster[-1] not in _TRUE:
            base, _, _ = url.partition("?")
            rest = urlencode(query, doseq=True)
            return cls("single", f"{base}?{rest}" if rest else base)
        userinfo, _, host = parts.netloc.rpartition("@")
        username, password = _credentials(userinfo)
        return cls("cluster", url, (_host_port(host, url),), username=username, password=password,
                   tls=scheme == "rediss")  # fmt: skip


def redis_client(url: str, timeout_s: float) -> RedisClient:
    """The client ``url`` names, with every call bounded by ``timeout_s`` and no retries of its own."""
    address = RedisAddress.parse(url)
    bounds = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if address.kind == "single":
        return redis.Redis.from_url(address.url, **bounds)
    credentials = {"username": address.username, "password": address.password}
    if address.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            ssl=address.tls,
            # a killed master's slots are served by its replica once promoted; the client finds the new
            # map at the next call rather than retrying this one
            **bounds,
            **credentials,
        )
    sentinel = Sentinel(
        list(address.nodes),
        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **credentials},
        **bounds,
    )
    return sentinel.master_for(address.service, db=address.db, ssl=address.tls, **bounds, **credentials)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(node: str, url: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"serving.redis_url: {node!r} is not host:port in {_redacted(url)}")
    return host.strip("[]"), int(port)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    _, at, hosts = rest.rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{hosts}"
