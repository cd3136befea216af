"""The job state's atomic steps, as Redis Lua scripts (jobs.state registers and calls them; their KEYS and ARGV
are laid out there). Each runs whole or not at all: a status change, a submit, a withdrawn submit."""

# Every status change: a finished job (completed, failed, canceled) never changes again, whoever writes late.
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 8))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[7], 'data', ARGV[1])
if ARGV[2] == 'pending' then redis.call('SADD', KEYS[6], KEYS[1]) else redis.call('SREM', KEYS[6], KEYS[1]) end
if ARGV[3] == '1' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
  redis.call('DEL', KEYS[5])
  redis.call('SREM', KEYS[3], KEYS[1])
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
end
return 1
"""


# A submit, all or nothing: the Idempotency-Key replay, both caps, and the new job's record, body, event log, open
# and pending membership, recent list and claim. Caps are checked and taken in the same step, so a burst cannot
# pass them; the claim exists only if the job does.
SUBMIT = """
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'replay', existing} end
end
local pending = redis.call('SCARD', KEYS[7])
if pending >= tonumber(ARGV[5]) then return {'queue_full', tostring(pending)} end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'key_full', ''} end
redis.call('HSET', KEYS[3], unpack(ARGV, 13))
redis.call('SET', KEYS[4], ARGV[6])
redis.call('SADD', KEYS[2], KEYS[3])
redis.call('SADD', KEYS[7], KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'event', ARGV[12], 'data', ARGV[7])
redis.call('HINCRBY', KEYS[6], 'submitted', 1)
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[11])
redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -tonumber(ARGV[10]) - 1)
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3])) end
return {'created', ''}
"""

# Undo a submit whose SAQ job could not be queued: nothing of it stays, its claim included (if still its own).
WITHDRAW = """
redis.call('SREM', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[7], KEYS[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('HINCRBY', KEYS[6], 'submitted', -1)
redis.call('ZREM', KEYS[8], ARGV[2])
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
