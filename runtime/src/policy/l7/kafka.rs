//! Kafka names as CiliumNetworkPolicy uses them: `apiKey` names, the API keys a
//! `role` expands to, and which requests carry topic names.

/// `apiKey` names (lowercase; policies match them case-insensitively) and their
/// numbers, as Cilium names them.
const API_KEYS: &[(&str, u16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
];

/// Role `produce`: Produce, Metadata, ApiVersions (Cilium's list).
pub const PRODUCE_ROLE: &[u16] = &[0, 3, 18];

/// Role `consume`: Fetch, Offsets (ListOffsets), Metadata, OffsetCommit,
/// OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup,
/// ApiVersions (Cilium's list).
pub const CONSUME_ROLE: &[u16] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18];

/// Requests that name no topic, so a rule's `topic` does not constrain them
/// (as in Cilium). Every other request is taken to name topics: when the parser
/// did not report them, a rule with a `topic` cannot be checked and does not
/// match — the engine never allows what it could not see.
const TOPICLESS: &[u16] = &[
    7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 22, 25, 26, 36, 38, 39, 40, 41, 42,
];

/// The number of an `apiKey` name (case-insensitive).
pub fn api_key(name: &str) -> Option<u16> {
    API_KEYS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, k)| *k)
}

/// The API keys a role expands to (case-insensitive).
pub fn role(name: &str) -> Option<&'static [u16]> {
    if name.eq_ignore_ascii_case("produce") {
        Some(PRODUCE_ROLE)
    } else if name.eq_ignore_ascii_case("consume") {
        Some(CONSUME_ROLE)
    } else {
        None
    }
}

/// Every `apiKey` name, for error messages.
pub fn api_key_names() -> impl Iterator<Item = &'static str> {
    API_KEYS.iter().map(|(n, _)| *n)
}

/// Whether requests of `api_key` can name topics.
pub fn names_topics(api_key: u16) -> bool {
    !TOPICLESS.contains(&api_key)
}

/// Cilium's topic rule: 1–255 characters of `[a-zA-Z0-9._-]`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 255
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
