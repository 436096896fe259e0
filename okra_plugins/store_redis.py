"""State store `redis`: state shared by several OKRA hosts, in a Redis server.

Option `url` ("redis://host:port/db", "rediss://..." for TLS, "unix:///path?db=N"),
checked here before redis-py sees it: a path that is not a database number and a query
parameter outside QUERY_PARAMETERS are errors, and no error shows the url's password.
Every write is one Lua script, so compare-and-set, increment and the version counter
are atomic on the server whatever the number of hosts. Standalone Redis only: the
version counter is one key shared by all namespaces, which Redis Cluster would not let a
script touch alongside a namespace's keys.

Key layout (P = the `prefix` option, "okra:state:" by default; N = the namespace as
UTF-8, L = its length in bytes, in decimal):

    P "version"                   string  the last version handed out (INCR), global
    P L ":" N ":i"                zset    the namespace's keys, all at score 0, so
                                          ZRANGEBYLEX lists them in byte order
    P L ":" N ":e:" key           hash    v = value, n = version, x = expiry (wall-clock
                                          ms of the store's clock; absent: none)

The length prefix makes the mapping from (namespace, key) to Redis keys injective, so a
namespace or key containing ":" or "#" cannot reach into another namespace.

Expiry follows the store's `clock` (the runtime's; a FakeClock in tests): reads skip a
hash whose `x` has passed. So that state never read again does not stay in Redis
forever, a hash with a TTL also gets the same TTL in Redis (PEXPIRE), and the index
gets a TTL no shorter than any of its members' (and none while a member has none).
Index members whose hash is gone are removed by the next `list` that meets them.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from okra_core.clock import Clock, SystemClock
from okra_core.errors import ConfigError
from okra_core.hookspecs import hookimpl
from okra_core.state import Entry, NotAnInteger, Page
from okra_plugins._state_common import (
    check_delta,
    check_limit,
    check_version,
    prefix_end,
    start_after,
    ttl_ms,
)

DEFAULT_PREFIX = "okra:state:"
#: Index members one `list` call examines at most, beyond the page it returns, so a
#: namespace full of expired members cannot make one script hold the server long.
LIST_SCAN_BUDGET = 2000

#: Query parameters a url may give (redis-py's connection options that make sense as
#: text); TLS_QUERY_PARAMETERS only for rediss://, KEEPALIVE not for unix://.
QUERY_PARAMETERS = (
    "db", "username", "password", "client_name", "socket_timeout", "socket_connect_timeout",
    "retry_on_timeout", "health_check_interval", "max_connections",
)
KEEPALIVE = ("socket_keepalive",)
TLS_QUERY_PARAMETERS = (
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
    "ssl_password", "ssl_check_hostname", "ssl_ciphers",
)
_PASSWORD_PARAMETER = re.compile(r"([?&](?:ssl_)?password=)[^&#]*")


def redact_url(url: str) -> str:
    """`url` with its password (user info, or a password query parameter) as ***, for
    messages and logs. Works on urls that do not parse; when unsure it hides more."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon:
            rest = f"{user}:***@{host}"
    return _PASSWORD_PARAMETER.sub(r"\1***", f"{scheme}{sep}{rest}")


def check_url(url: str) -> None:
    """Refuse what redis-py would misread: an unknown query parameter (a TypeError deep
    in redis-py), a path that is not a database number (silently db 0), bad numbers."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"state store redis: bad url {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"state store redis: bad url {shown!r}: it must start with redis://, rediss:// "
            "or unix://"
        )
    known = QUERY_PARAMETERS + (() if scheme == "unix" else KEEPALIVE) + (
        TLS_QUERY_PARAMETERS if scheme == "rediss" else ()
    )
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ConfigError(
            f"state store redis: unknown query parameter {', '.join(unknown)} in the url "
            f"{shown!r} (known: {', '.join(known)})"
        )
    for name in ("db", "health_check_interval", "max_connections"):
        if name in query and not query[name][0].isdigit():
            raise ConfigError(
                f"state store redis: {name} must be a whole number, got {query[name][0]!r} "
                f"in the url {shown!r}"
            )
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in query:
            try:
                float(query[name][0])
            except ValueError:
                raise ConfigError(
                    f"state store redis: {name} must be a number of seconds, got "
                    f"{query[name][0]!r} in the url {shown!r}"
                ) from None
    path = urllib.parse.unquote(parts.path)
    if scheme != "unix" and path not in ("", "/") and not (
        path[1:].isdigit() and path.startswith("/") and path[1:].isascii()
    ):
        raise ConfigError(
            f"state store redis: the path of a redis url is the database number, e.g. "
            f"redis://localhost:6379/0; got {path!r} in the url {shown!r}"
        )


_COMMON = """
local function index_add(index, member, ttl)
  local existed = redis.call('EXISTS', index)
  redis.call('ZADD', index, 0, member)
  if ttl == '' then
    redis.call('PERSIST', index)
  else
    local ms = tonumber(ttl)
    local left = redis.call('PTTL', index)
    if existed == 0 or (left >= 0 and left < ms) then
      redis.call('PEXPIRE', index, ms)
    end
  end
end

local function live(entry, now)
  local e = redis.call('HMGET', entry, 'v', 'n', 'x')
  if not e[2] then return nil end
  if e[3] and tonumber(e[3]) <= tonumber(now) then return nil end
  return e
end

local function next_version(counter)
  redis.call('INCR', counter)
  return redis.call('GET', counter)
end

-- KEYS: entry, index, counter; the new value goes in with a new version.
local function write(value, member, expires, ttl)
  local version = next_version(KEYS[3])
  redis.call('DEL', KEYS[1])
  if expires == '' then
    redis.call('HSET', KEYS[1], 'v', value, 'n', version)
  else
    redis.call('HSET', KEYS[1], 'v', value, 'n', version, 'x', expires)
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  index_add(KEYS[2], member, ttl)
  return version
end
"""

# ARGV: member, value, expires, ttl
_SET = _COMMON + """
return write(ARGV[2], ARGV[1], ARGV[3], ARGV[4])
"""

# ARGV: member, value, expires, ttl, now, expected version
_COMPARE_AND_SET = _COMMON + """
local e = live(KEYS[1], ARGV[5])
local current = '0'
if e then current = e[2] end
if current ~= ARGV[6] then return false end
return write(ARGV[2], ARGV[1], ARGV[3], ARGV[4])
"""

# KEYS: entry, index; ARGV: member, now
_DELETE = _COMMON + """
local e = live(KEYS[1], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if e then return 1 end
return 0
"""

# ARGV: member, delta, expires, ttl, now. Redis does the 64-bit arithmetic (HINCRBY) on
# the value put in canonical form (no leading zeros; "-0" is "0"); Lua numbers are
# doubles and would lose digits.
_INCREMENT = _COMMON + """
local e = live(KEYS[1], ARGV[5])
local original = nil
if e then original = e[1] else redis.call('DEL', KEYS[1]) end
local canonical = '0'
if original then
  if not string.match(original, '^%-?%d+$') then return {'not-an-integer'} end
  local negative = string.sub(original, 1, 1) == '-'
  local digits = original
  if negative then digits = string.sub(original, 2) end
  digits = (string.gsub(digits, '^0+', ''))
  if #digits > 19 then return {'not-an-integer'} end
  if digits == '' then canonical = '0'
  elseif negative then canonical = '-' .. digits
  else canonical = digits end
end
redis.call('HSET', KEYS[1], 'v', canonical)
local result = redis.pcall('HINCRBY', KEYS[1], 'v', ARGV[2])
if type(result) == 'table' and result.err then
  if original then redis.call('HSET', KEYS[1], 'v', original) else redis.call('DEL', KEYS[1]) end
  if string.find(result.err, 'overflow') then return {'overflow'} end
  return {'not-an-integer'}
end
local version = next_version(KEYS[3])
redis.call('HSET', KEYS[1], 'n', version)
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'x')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'x', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
index_add(KEYS[2], ARGV[1], ARGV[4])
return {'ok', redis.call('HGET', KEYS[1], 'v')}
"""

# KEYS: index; ARGV: min, max, wanted, now, entry key prefix, scan budget.
# Returns {exhausted (0/1), last member examined, {member, value, version, ...}}.
_LIST = """
local wanted = tonumber(ARGV[3])
local budget = tonumber(ARGV[6])
local now = tonumber(ARGV[4])
local out = {}
local found = 0
local scanned = 0
local last = ''
local exhausted = 0
local min = ARGV[1]
while found < wanted and scanned < budget do
  local ask = wanted - found
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], min, ARGV[2], 'LIMIT', 0, ask)
  for _, member in ipairs(batch) do
    scanned = scanned + 1
    last = member
    local entry = ARGV[5] .. member
    local e = redis.call('HMGET', entry, 'v', 'n', 'x')
    if not e[2] then
      redis.call('ZREM', KEYS[1], member)
    elseif e[3] and tonumber(e[3]) <= now then
      redis.call('DEL', entry)
      redis.call('ZREM', KEYS[1], member)
    else
      out[#out + 1] = member
      out[#out + 1] = e[1]
      out[#out + 1] = e[2]
      found = found + 1
    end
  end
  if #batch < ask then
    exhausted = 1
    break
  end
  min = '(' .. last
end
return {exhausted, last, out}
"""


class RedisStore:
    name = "redis"

    def __init__(
        self, url: str, clock: Clock | None = None, prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
    ):
        check_url(url)
        import redis  # here, not at the top: importing it takes ~120 ms of every start

        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except (ValueError, TypeError) as exc:
            # redis-py's message may quote the url; name it ourselves, redacted.
            raise ConfigError(
                f"state store redis: bad url {redact_url(url)!r} ({type(exc).__name__})"
            ) from None
        #: The url with its password hidden, for messages.
        self.url = redact_url(url)
        self._clock = clock or SystemClock()
        self._prefix = prefix.encode()
        self._counter = self._prefix + b"version"
        try:
            self._client.ping()
        except BaseException:
            self._client.close()
            raise
        register = self._client.register_script
        self._set = register(_SET)
        self._compare_and_set = register(_COMPARE_AND_SET)
        self._delete = register(_DELETE)
        self._increment = register(_INCREMENT)
        self._list = register(_LIST)

    def _base(self, namespace: str) -> bytes:
        encoded = namespace.encode("utf-8", "surrogatepass")
        return b"%s%d:%s:" % (self._prefix, len(encoded), encoded)

    def _keys(self, namespace: str, key: bytes) -> list[bytes]:
        base = self._base(namespace)
        return [base + b"e:" + key, base + b"i", self._counter]

    def _now_ms(self) -> int:
        return self._clock.time_ns() // 1_000_000

    def _expiry_args(self, ttl: float | None) -> tuple[bytes | int, bytes | int]:
        ms = ttl_ms(ttl)
        if ms is None:
            return b"", b""
        return self._now_ms() + ms, ms

    def get(self, namespace: str, key: bytes) -> Entry | None:
        value, version, expires = self._client.hmget(
            self._base(namespace) + b"e:" + bytes(key), (b"v", b"n", b"x")
        )
        if version is None or (expires is not None and int(expires) <= self._now_ms()):
            return None
        return Entry(value, int(version))

    def set(self, namespace: str, key: bytes, value: bytes, *, ttl: float | None = None) -> int:
        key = bytes(key)
        expires, ms = self._expiry_args(ttl)
        return int(self._set(self._keys(namespace, key), [key, bytes(value), expires, ms]))

    def delete(self, namespace: str, key: bytes) -> bool:
        key = bytes(key)
        return bool(self._delete(self._keys(namespace, key)[:2], [key, self._now_ms()]))

    def compare_and_set(
        self, namespace: str, key: bytes, value: bytes, *, version: int, ttl: float | None = None
    ) -> int | None:
        check_version(version)
        key = bytes(key)
        expires, ms = self._expiry_args(ttl)
        result = self._compare_and_set(
            self._keys(namespace, key), [key, bytes(value), expires, ms, self._now_ms(), version]
        )
        return None if result is None else int(result)

    def increment(
        self, namespace: str, key: bytes, delta: int, *, ttl: float | None = None
    ) -> int:
        check_delta(delta)
        key = bytes(key)
        expires, ms = self._expiry_args(ttl)
        outcome, *rest = self._increment(
            self._keys(namespace, key), [key, delta, expires, ms, self._now_ms()]
        )
        if outcome == b"not-an-integer":
            raise NotAnInteger("the stored value is not a 64-bit decimal integer")
        if outcome == b"overflow":
            raise OverflowError(f"incrementing by {delta} leaves the 64-bit range")
        return int(rest[0])

    def list(
        self, namespace: str, prefix: bytes = b"", *, cursor: bytes | None = None,
        limit: int = 100,
    ) -> Page:
        check_limit(limit)
        prefix = bytes(prefix)
        start, inclusive = start_after(prefix, None if cursor is None else bytes(cursor))
        end = prefix_end(prefix)
        base = self._base(namespace)
        exhausted, last, flat = self._list(
            [base + b"i"],
            [
                (b"[" if inclusive else b"(") + start,
                b"+" if end is None else b"(" + end,
                limit + 1,
                self._now_ms(),
                base + b"e:",
                LIST_SCAN_BUDGET + limit,
            ],
        )
        entries = [
            (flat[i], Entry(flat[i + 1], int(flat[i + 2]))) for i in range(0, len(flat), 3)
        ]
        if len(entries) > limit:
            return Page(entries[:limit], entries[limit - 1][0])
        if exhausted:
            return Page(entries, None)
        # The scan budget ran out among expired members: go on after the last one seen.
        return Page(entries, last)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"


def make_redis_store(
    url: str | None = None, clock: Clock | None = None, prefix: str = DEFAULT_PREFIX,
    timeout: float = 5.0, **unknown: Any,
) -> RedisStore:
    if unknown:
        raise ConfigError(
            f"unknown options for state store redis: {', '.join(sorted(unknown))} "
            "(known: url, clock, prefix, timeout)"
        )
    if not url:
        raise ConfigError('state store redis needs a url, e.g. "redis://localhost:6379/0"')
    return RedisStore(url, clock=clock, prefix=prefix, timeout=timeout)


@hookimpl
def register_state_stores(register):
    register("redis", make_redis_store)
