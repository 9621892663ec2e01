//! The Redis store's Lua scripts: each slot operation runs as one, so it is atomic at
//! the engine. Entries are strings: `w INST ID IP HASH` (waiting; HASH: the holder's
//! reclaim hash, hex), `p INST ID INST ID IP HASH` (paired: the waiting side, the claimer,
//! then the waiting side's address and hash), `b a` / `b w`
//! (burned: abandoned, wrong code), and on rejoin channels `s|r INST ID IP`. Each
//! script keeps its key's member in a sorted set scored by expiry (the open count).

/// KEYS: open set, candidate keys…; ARGV: now ms, ttl ms, max, value, candidate numbers….
/// Returns {nameplate or 0 (all taken) or -1 (full), open}.
pub(super) const ALLOCATE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[3]) then return {-1, open} end
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[4], 'NX', 'PX', ARGV[2]) then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[3 + i])
    return {tonumber(ARGV[3 + i]), open + 1}
  end
end
return {0, open}
";

/// KEYS: nameplate, open set; ARGV: claimer 'inst id', pair ttl ms, now ms, nameplate.
/// A waiting entry becomes paired in the same step. Returns the entry as it was.
pub(super) const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local _, _, waiting, rest = string.find(v, '^w (%S+ %S+) (%S+ %S+)$')
if waiting then
  redis.call('SET', KEYS[1], 'p ' .. waiting .. ' ' .. ARGV[1] .. ' ' .. rest, 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[4])
end
return v
";

/// KEYS: nameplate; ARGV: reclaim hash, new holder 'inst id'. A waiting entry with that
/// hash moves to the new holder, keeping its expiry. Returns its ms left, or -1.
pub(super) const RECLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local _, _, ip, h = string.find(v, '^w %S+ %S+ (%S+) (%S+)$')
if not h or h ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], 'w ' .. ARGV[2] .. ' ' .. ip .. ' ' .. h, 'KEEPTTL')
return redis.call('PTTL', KEYS[1])
";

/// KEYS: key, open set; ARGV: expected value, new value, ttl ms, now ms, member.
pub(super) const REPLACE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[5])
return 1
";

/// KEYS: nameplate, open set; ARGV: member 'inst id', burned value, ttl ms, now ms,
/// nameplate. Only a pair the member is part of.
pub(super) const BURN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local _, _, a, b = string.find(v, '^p (%S+ %S+) (%S+ %S+) ')
if a ~= ARGV[1] and b ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[5])
return 1
";

/// KEYS: nameplate, open set; ARGV: member 'inst id', nameplate. Its waiting slot or its
/// pair; never a tombstone or someone else's entry.
pub(super) const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local _, _, w = string.find(v, '^w (%S+ %S+) ')
local _, _, a, b = string.find(v, '^p (%S+ %S+) (%S+ %S+) ')
if w ~= ARGV[1] and a ~= ARGV[1] and b ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// KEYS: channel, rejoin set; ARGV: side ('s'/'r'), value, ttl ms, now ms, max, channel.
/// Returns {'meet', other} (taken off), {'replaced', old}, {'wait'} or {'full'}.
pub(super) const REJOIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[6])
  return {'meet', v}
end
if not v then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return {'full'} end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[6])
if v then return {'replaced', v} end
return {'wait'}
";

/// KEYS: channel, rejoin set; ARGV: value, ttl ms, now ms, channel.
pub(super) const PUT_BACK_REJOIN: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[4])
end
return 1
";

/// KEYS: N watch keys, then the N channels' rejoin keys; ARGV: watcher 'inst id', ttl
/// ms. Returns the (1-based) indices of the channels a sender waits on.
pub(super) const WATCH: &str = r"
local n = #KEYS / 2
local waiting = {}
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  local v = redis.call('GET', KEYS[n + i])
  if v and string.sub(v, 1, 1) == 's' then table.insert(waiting, i) end
end
return waiting
";

/// KEYS: watch keys; ARGV: watcher 'inst id'. Only the watches still its own.
pub(super) const UNWATCH: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
";

/// KEYS: channel, rejoin set; ARGV: member 'inst id', channel.
pub(super) const LEAVE_REJOIN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local _, _, w = string.find(v, '^%S (%S+ %S+) ')
if w ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";
