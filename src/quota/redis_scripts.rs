//! The Lua scripts of the fleet's quota (see `redis_backend.rs`).
//!
//! Each runs atomically in Redis and reads the time from Redis (`TIME`), so
//! every replica uses one clock whatever its own says. Numbers written
//! back go through `%.0f`: Redis turns a Lua number into text with 14
//! digits, too few for microseconds since the epoch.

use redis::Script;
use std::sync::LazyLock;

/// Admits a request. KEYS: bucket, budget. ARGV: interval (µs, 0: no
/// smoothing), burst (requests), max_wait (µs). Returns `{kind, a, b,
/// limit, remaining, used, reset, blocked_ms}` (-1: unknown), where kind
/// is 0 (admitted, no smoothing), 1 (slot: a = wait µs, b = new tat µs),
/// 2 (no slot within max_wait: a = µs past it) or 3 (blocked: a = ms).
/// A blocked or refused request reserves nothing.
pub static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local b = redis.call('HMGET', KEYS[2], 'limit', 'remaining', 'used', 'reset', 'blocked_until')
local function num(v) return tonumber(v) or -1 end
local limit, remaining, used, reset, till = num(b[1]), num(b[2]), num(b[3]), num(b[4]), num(b[5])
local left = 0
if remaining == 0 and reset >= 0 and reset * 1000 > now_ms then left = reset * 1000 - now_ms end
if till > now_ms and till - now_ms > left then left = till - now_ms end
local function reply(kind, x, y) return {kind, x, y, limit, remaining, used, reset, left} end
if left > 0 then return reply(3, left, 0) end
local interval = tonumber(ARGV[1])
if interval <= 0 then return reply(0, 0, 0) end
local burst = interval * tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local at = new_tat - burst
if at < now then at = now end
if at - now > max_wait then return reply(2, at - now - max_wait, 0) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1000))
return reply(1, at - now, new_tat)",
    )
});

/// Records one answer, merged as `Budget::record` does (within a window
/// the lowest `remaining` wins; an earlier window's answer is ignored).
/// KEYS: budget. ARGV: limit, remaining, used, reset (epoch s), retry
/// (ms, a refusal's `Retry-After`); -1: absent. The hash expires at the
/// reset (or the end of the block), within a day. Returns `{limit,
/// remaining, used, reset, blocked_ms}`.
pub static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(v) local n = tonumber(v); if n == nil or n < 0 then return nil end return n end
local o = redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'used', 'reset', 'blocked_until')
local ol, orem, ou, ores, till = num(o[1]), num(o[2]), num(o[3]), num(o[4]), num(o[5])
local sl, srem, su, sres = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), num(ARGV[4])
local l, rem, u, res = ol, orem, ou, ores
if sl or srem or su or sres then
  if ores and sres and sres < ores then
    -- from an earlier window: nothing to learn
  elseif ores and sres and sres == ores and (srem or math.huge) > (orem or math.huge) then
    l = sl or ol
  else
    l, rem, u, res = sl, srem, su, sres
  end
end
local retry = num(ARGV[5])
if retry and (not till or now_ms + retry > till) then till = now_ms + retry end
local fields = {}
local function put(k, v) if v then fields[#fields + 1] = k; fields[#fields + 1] = string.format('%.0f', v) end end
put('limit', l); put('remaining', rem); put('used', u); put('reset', res); put('blocked_until', till)
redis.call('DEL', KEYS[1])
if #fields > 0 then
  local expire = now_ms + 3600000
  if res then expire = res * 1000 end
  if till and till > expire then expire = till end
  if expire < now_ms + 1000 then expire = now_ms + 1000 end
  if expire > now_ms + 86400000 then expire = now_ms + 86400000 end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', expire))
end
local left = 0
if rem == 0 and res and res * 1000 > now_ms then left = res * 1000 - now_ms end
if till and till - now_ms > left then left = till - now_ms end
return {l or -1, rem or -1, u or -1, res or -1, left}",
    )
});

/// Gives a slot back when it is still the last one reserved and not yet
/// reached (as `Gcra::give_back`). KEYS: bucket. ARGV: the slot's tat,
/// interval, burst (both µs). Returns 1 when given back.
pub static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(ARGV[1])
if slot - tonumber(ARGV[3]) <= now then return 0 end
if tonumber(redis.call('GET', KEYS[1])) ~= slot then return 0 end
redis.call('SET', KEYS[1], string.format('%.0f', slot - tonumber(ARGV[2])), 'KEEPTTL')
return 1",
    )
});
