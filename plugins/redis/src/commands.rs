//! What the parser knows about Redis commands: where the first key is, and which
//! commands have a subcommand. Names are matched uppercase.

/// Where a command's first key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAt {
    /// The command takes no key (or only channels, patterns, scripts).
    None,
    /// The key is argument `n` (the command name is argument 0).
    Arg(usize),
    /// `numkeys` is argument `n`; the first key follows it when `numkeys > 0`
    /// (EVAL, FCALL, ZUNION, LMPOP, …).
    AfterNumkeys(usize),
    /// The first key follows the `STREAMS` token (XREAD, XREADGROUP).
    AfterStreams,
}

/// Commands whose second word names an operation (`CONFIG GET`, `CLIENT LIST`).
pub(crate) fn has_subcommand(cmd: &[u8]) -> bool {
    matches!(
        cmd,
        b"ACL"
            | b"CLIENT"
            | b"CLUSTER"
            | b"COMMAND"
            | b"CONFIG"
            | b"DEBUG"
            | b"FUNCTION"
            | b"LATENCY"
            | b"MEMORY"
            | b"MODULE"
            | b"OBJECT"
            | b"PUBSUB"
            | b"SCRIPT"
            | b"SLOWLOG"
            | b"XGROUP"
            | b"XINFO"
    )
}

/// Where `cmd`'s first key is. Unknown commands are taken to have none: a wrong
/// key would be worse than no key for policy.
pub(crate) fn key_at(cmd: &[u8]) -> KeyAt {
    match cmd {
        // Strings, keyspace, bitmaps.
        b"GET" | b"SET" | b"SETNX" | b"SETEX" | b"PSETEX" | b"GETSET" | b"GETDEL" | b"GETEX"
        | b"APPEND" | b"STRLEN" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" | b"INCRBYFLOAT"
        | b"GETRANGE" | b"SETRANGE" | b"SUBSTR" | b"LCS" | b"DEL" | b"UNLINK" | b"EXISTS"
        | b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"EXPIRETIME"
        | b"PEXPIRETIME" | b"TTL" | b"PTTL" | b"PERSIST" | b"TYPE" | b"RENAME" | b"RENAMENX"
        | b"DUMP" | b"RESTORE" | b"TOUCH" | b"MGET" | b"MSET" | b"MSETNX" | b"COPY"
        | b"MOVE" | b"SORT" | b"SORT_RO" | b"GETBIT" | b"SETBIT" | b"BITCOUNT" | b"BITPOS"
        | b"BITFIELD" | b"BITFIELD_RO" | b"WATCH"
        // Lists.
        | b"LPUSH" | b"RPUSH" | b"LPUSHX" | b"RPUSHX" | b"LPOP" | b"RPOP" | b"LLEN"
        | b"LRANGE" | b"LINDEX" | b"LSET" | b"LREM" | b"LTRIM" | b"LINSERT" | b"LPOS"
        | b"LMOVE" | b"RPOPLPUSH" | b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE"
        // Sets.
        | b"SADD" | b"SREM" | b"SMEMBERS" | b"SISMEMBER" | b"SMISMEMBER" | b"SCARD"
        | b"SPOP" | b"SRANDMEMBER" | b"SMOVE" | b"SINTER" | b"SUNION" | b"SDIFF"
        | b"SINTERSTORE" | b"SUNIONSTORE" | b"SDIFFSTORE" | b"SSCAN"
        // Hashes.
        | b"HSET" | b"HSETNX" | b"HGET" | b"HMSET" | b"HMGET" | b"HDEL" | b"HLEN"
        | b"HEXISTS" | b"HKEYS" | b"HVALS" | b"HGETALL" | b"HINCRBY" | b"HINCRBYFLOAT"
        | b"HSTRLEN" | b"HSCAN" | b"HRANDFIELD"
        // Sorted sets.
        | b"ZADD" | b"ZREM" | b"ZSCORE" | b"ZMSCORE" | b"ZINCRBY" | b"ZCARD" | b"ZCOUNT"
        | b"ZRANGE" | b"ZRANGESTORE" | b"ZREVRANGE" | b"ZRANGEBYSCORE"
        | b"ZREVRANGEBYSCORE" | b"ZRANGEBYLEX" | b"ZREVRANGEBYLEX" | b"ZLEXCOUNT"
        | b"ZRANK" | b"ZREVRANK" | b"ZREMRANGEBYRANK" | b"ZREMRANGEBYSCORE"
        | b"ZREMRANGEBYLEX" | b"ZPOPMIN" | b"ZPOPMAX" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"ZSCAN" | b"ZRANDMEMBER" | b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE"
        // HyperLogLog, geo, streams.
        | b"PFADD" | b"PFCOUNT" | b"PFMERGE" | b"GEOADD" | b"GEODIST" | b"GEOHASH"
        | b"GEOPOS" | b"GEORADIUS" | b"GEORADIUS_RO" | b"GEORADIUSBYMEMBER"
        | b"GEORADIUSBYMEMBER_RO" | b"GEOSEARCH" | b"GEOSEARCHSTORE" | b"XADD" | b"XLEN"
        | b"XRANGE" | b"XREVRANGE" | b"XDEL" | b"XTRIM" | b"XACK" | b"XPENDING"
        | b"XCLAIM" | b"XAUTOCLAIM" | b"XSETID" => KeyAt::Arg(1),
        // `OBJECT ENCODING key`, `MEMORY USAGE key`, `XINFO STREAM key`,
        // `XGROUP CREATE key …`, `BITOP AND dest …`.
        b"OBJECT" | b"MEMORY" | b"XINFO" | b"XGROUP" | b"BITOP" => KeyAt::Arg(2),
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            KeyAt::AfterNumkeys(2)
        }
        b"ZUNION" | b"ZINTER" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP"
        | b"ZMPOP" => KeyAt::AfterNumkeys(1),
        b"BLMPOP" | b"BZMPOP" => KeyAt::AfterNumkeys(2),
        b"XREAD" | b"XREADGROUP" => KeyAt::AfterStreams,
        _ => KeyAt::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_positions() {
        assert_eq!(key_at(b"GET"), KeyAt::Arg(1));
        assert_eq!(key_at(b"OBJECT"), KeyAt::Arg(2));
        assert_eq!(key_at(b"EVAL"), KeyAt::AfterNumkeys(2));
        assert_eq!(key_at(b"XREAD"), KeyAt::AfterStreams);
        assert_eq!(key_at(b"PING"), KeyAt::None);
        assert_eq!(key_at(b"PUBLISH"), KeyAt::None);
        assert!(has_subcommand(b"CONFIG"));
        assert!(!has_subcommand(b"GET"));
    }
}
