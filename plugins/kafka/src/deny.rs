//! Deny replies: a response of the request's own API and version carrying the
//! authorization error a broker answers a principal denied that request, so the
//! client reports an authorization failure and keeps the connection.
//!
//! The code is the one the broker's first authorization check gives:
//!
//! - topics (29 TOPIC_AUTHORIZATION_FAILED) on every partition or topic:
//!   Produce (53 TRANSACTIONAL_ID_AUTHORIZATION_FAILED when it carries a
//!   `transactional_id`), Fetch, ListOffsets, Metadata (each named topic; none
//!   when all topics were asked for), CreateTopics, DeleteTopics;
//! - groups (30 GROUP_AUTHORIZATION_FAILED): OffsetCommit (every partition),
//!   OffsetFetch (every partition in v0–v1, top level in v2–v7, every group from
//!   v8), FindCoordinator for a group, JoinGroup, Heartbeat, LeaveGroup,
//!   SyncGroup, DeleteGroups, OffsetDelete;
//! - transactional ids (53): FindCoordinator for a transaction, InitProducerId
//!   with a `transactional_id`, AddPartitionsToTxn (v0–v3), AddOffsetsToTxn,
//!   EndTxn, TxnOffsetCommit;
//! - the cluster (31 CLUSTER_AUTHORIZATION_FAILED): InitProducerId without a
//!   `transactional_id` (idempotent producers need `IdempotentWrite` on the
//!   cluster).
//!
//! Other APIs and versions get no reply (empty) and the agent closes the
//! connection instead — as a broker does for a Produce with `acks=0`, which
//! awaits no response.

use loupe_sdk::{ParseError, Vec};

use crate::request::{self, TopicList};
use crate::wire::{Reader, Writer};
use crate::{Header, apis, request_header};

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;
const TRANSACTION_DENIED: i16 = 53;

pub(crate) fn reply(request: &[u8]) -> Vec<u8> {
    build(request).ok().flatten().unwrap_or_default()
}

/// A topic as the request named it (name, or id from the versions that use
/// ids) and the partitions it listed.
struct Topic<'a> {
    key: &'a [u8],
    /// The id of Metadata v10+ and DeleteTopics v6+ topics.
    id: Option<&'a [u8]>,
    partitions: Vec<i32>,
}

fn build(request: &[u8]) -> Result<Option<Vec<u8>>, ParseError> {
    let size = request
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| ParseError::new(0, "no message size"))?;
    let body = request
        .get(4..4usize.saturating_add(size))
        .ok_or_else(|| ParseError::new(0, "truncated request"))?;
    let mut r = Reader {
        buf: body,
        pos: 0,
        base: 4,
    };
    let h = request_header(&mut r)?;
    let mut w = Writer::default();
    // Size (patched below), correlation id, and the response header's tagged
    // fields in flexible versions (ApiVersions is never denied here).
    w.i32(0).i32(h.correlation).tags(h.flexible);
    let written = match h.key {
        apis::PRODUCE
        | apis::FETCH
        | apis::LIST_OFFSETS
        | apis::METADATA
        | apis::OFFSET_COMMIT
        | apis::CREATE_TOPICS
        | apis::DELETE_TOPICS => topic_api(&h, &mut r, &mut w)?,
        apis::OFFSET_FETCH => offset_fetch(&h, &mut r, &mut w)?,
        apis::TXN_OFFSET_COMMIT => txn_offset_commit(&h, &mut r, &mut w)?,
        apis::ADD_PARTITIONS_TO_TXN => add_partitions_to_txn(&h, &mut r, &mut w)?,
        apis::DELETE_GROUPS => delete_groups(&h, &mut r, &mut w)?,
        apis::FIND_COORDINATOR => find_coordinator(&h, &mut r, &mut w)?,
        _ => simple(&h, &mut r, &mut w)?,
    };
    if !written {
        return Ok(None);
    }
    let size = i32::try_from(w.0.len() - 4).map_err(|_| ParseError::new(0, "reply too large"))?;
    w.0[..4].copy_from_slice(&size.to_be_bytes());
    Ok(Some(w.0))
}

/// Reads the topics and partitions of a request of a topic API.
fn topics<'a>(
    h: &Header,
    r: &mut Reader<'a>,
    list: TopicList,
) -> Result<Vec<Topic<'a>>, ParseError> {
    let (f, v) = (h.flexible, h.version);
    let mut out = Vec::new();
    if list == TopicList::Strings {
        for _ in 0..r.count(f)? {
            out.push(Topic {
                key: r.text(f)?,
                id: None,
                partitions: Vec::new(),
            });
        }
        return Ok(out);
    }
    for _ in 0..r.count(f)? {
        let (key, mut id) = match list {
            TopicList::Ids => (r.uuid()?, None),
            TopicList::IdThenName => {
                let id = r.uuid()?;
                (r.text(f)?, Some(id))
            }
            _ => (r.text(f)?, None),
        };
        let mut partitions = Vec::new();
        match h.key {
            apis::METADATA => {}
            apis::CREATE_TOPICS => {
                r.skip(6)?; // num_partitions, replication_factor
                for _ in 0..r.count(f)? {
                    r.i32()?; // partition_index
                    r.skip_array(f, 4)?; // broker_ids
                    r.tags(f)?;
                }
                for _ in 0..r.count(f)? {
                    r.string(f)?; // name
                    r.string(f)?; // value
                    r.tags(f)?;
                }
            }
            apis::DELETE_TOPICS => id = Some(r.uuid()?), // v6+
            _ => {
                for _ in 0..r.count(f)? {
                    partitions.push(r.i32()?);
                    partition_tail(h.key, v, f, r)?;
                    r.tags(f)?;
                }
            }
        }
        r.tags(f)?;
        out.push(Topic {
            key,
            id,
            partitions,
        });
    }
    Ok(out)
}

/// The rest of a request partition after its index.
fn partition_tail(key: i16, v: i16, f: bool, r: &mut Reader<'_>) -> Result<(), ParseError> {
    match key {
        apis::PRODUCE => r.bytes(f)?, // records
        apis::FETCH => {
            if v >= 9 {
                r.i32()?; // current_leader_epoch
            }
            r.skip(8)?; // fetch_offset
            if v >= 12 {
                r.i32()?; // last_fetched_epoch
            }
            if v >= 5 {
                r.skip(8)?; // log_start_offset
            }
            r.i32()?; // partition_max_bytes
        }
        apis::LIST_OFFSETS => {
            if v >= 4 {
                r.i32()?; // current_leader_epoch
            }
            r.skip(8)?; // timestamp
            if v == 0 {
                r.i32()?; // max_num_offsets
            }
        }
        apis::OFFSET_COMMIT | apis::TXN_OFFSET_COMMIT => {
            r.skip(8)?; // committed_offset
            let epoch_from = if key == apis::OFFSET_COMMIT { 6 } else { 2 };
            if v >= epoch_from {
                r.i32()?; // committed_leader_epoch
            }
            if key == apis::OFFSET_COMMIT && v == 1 {
                r.skip(8)?; // commit_timestamp
            }
            r.string(f)?; // committed_metadata
        }
        _ => {}
    }
    Ok(())
}

/// Produce, Fetch, ListOffsets, Metadata, OffsetCommit, CreateTopics,
/// DeleteTopics.
fn topic_api(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    let Some(prefix) = request::to_topics(h.key, v, f, r)? else {
        return Ok(false);
    };
    if prefix.acks == Some(0) {
        // No response is awaited; a broker closes the connection instead.
        return Ok(false);
    }
    let ts = topics(h, r, prefix.list)?;
    let by_id = prefix.list == TopicList::Ids;
    let key = |w: &mut Writer, t: &Topic<'_>| {
        if by_id {
            w.raw(t.key);
        } else {
            w.string(t.key, f);
        }
    };
    match h.key {
        apis::PRODUCE => {
            let code = if prefix.transactional {
                TRANSACTION_DENIED
            } else {
                TOPIC_DENIED
            };
            w.array(ts.len(), f);
            for t in &ts {
                key(w, t);
                w.array(t.partitions.len(), f);
                for &p in &t.partitions {
                    w.i32(p).i16(code).i64(-1);
                    if v >= 2 {
                        w.i64(-1); // log_append_time_ms
                    }
                    if v >= 5 {
                        w.i64(-1); // log_start_offset
                    }
                    if v >= 8 {
                        w.array(0, f).null_string(f);
                    }
                    w.tags(f);
                }
                w.tags(f);
            }
            if v >= 1 {
                w.i32(0);
            }
        }
        apis::FETCH => {
            if v >= 1 {
                w.i32(0);
            }
            if v >= 7 {
                w.i16(0).i32(0); // error_code, session_id
            }
            w.array(ts.len(), f);
            for t in &ts {
                key(w, t);
                w.array(t.partitions.len(), f);
                for &p in &t.partitions {
                    w.i32(p).i16(TOPIC_DENIED).i64(-1);
                    if v >= 4 {
                        w.i64(-1); // last_stable_offset
                    }
                    if v >= 5 {
                        w.i64(-1); // log_start_offset
                    }
                    if v >= 4 {
                        w.array(0, f); // aborted_transactions
                    }
                    if v >= 11 {
                        w.i32(-1); // preferred_read_replica
                    }
                    w.null_array(f); // records: null
                    w.tags(f);
                }
                w.tags(f);
            }
        }
        apis::LIST_OFFSETS => {
            if v >= 2 {
                w.i32(0);
            }
            w.array(ts.len(), f);
            for t in &ts {
                key(w, t);
                w.array(t.partitions.len(), f);
                for &p in &t.partitions {
                    w.i32(p).i16(TOPIC_DENIED);
                    if v == 0 {
                        w.array(0, f); // old_style_offsets
                    } else {
                        w.i64(-1).i64(-1); // timestamp, offset
                    }
                    if v >= 4 {
                        w.i32(-1); // leader_epoch
                    }
                    w.tags(f);
                }
                w.tags(f);
            }
        }
        apis::METADATA => {
            if v >= 3 {
                w.i32(0);
            }
            w.array(0, f); // brokers
            if v >= 2 {
                w.null_string(f); // cluster_id
            }
            if v >= 1 {
                w.i32(-1); // controller_id
            }
            w.array(ts.len(), f);
            for t in &ts {
                w.i16(TOPIC_DENIED);
                if v >= 12 && t.key.is_empty() {
                    w.null_string(f);
                } else {
                    w.string(t.key, f);
                }
                if v >= 10 {
                    w.raw(t.id.unwrap_or(&[0; 16]));
                }
                if v >= 1 {
                    w.raw(&[0]); // is_internal
                }
                w.array(0, f); // partitions
                if v >= 8 {
                    w.i32(i32::MIN); // topic_authorized_operations: unknown
                }
                w.tags(f);
            }
            if (8..=10).contains(&v) {
                w.i32(i32::MIN); // cluster_authorized_operations
            }
            if v >= 13 {
                w.i16(0); // error_code (top level: the topics carry the denial)
            }
        }
        apis::OFFSET_COMMIT => {
            if v >= 3 {
                w.i32(0);
            }
            partition_codes(w, &ts, f, by_id, GROUP_DENIED);
        }
        apis::CREATE_TOPICS => {
            if v >= 2 {
                w.i32(0);
            }
            w.array(ts.len(), f);
            for t in &ts {
                w.string(t.key, f);
                if v >= 7 {
                    w.raw(&[0; 16]); // topic_id
                }
                w.i16(TOPIC_DENIED);
                if v >= 1 {
                    w.null_string(f); // error_message
                }
                if v >= 5 {
                    w.i32(-1).i16(-1).null_array(f); // num_partitions, replication_factor, configs
                }
                w.tags(f);
            }
        }
        apis::DELETE_TOPICS => {
            if v >= 1 {
                w.i32(0);
            }
            w.array(ts.len(), f);
            for t in &ts {
                if v >= 6 && t.key.is_empty() {
                    w.null_string(f);
                } else {
                    w.string(t.key, f);
                }
                if v >= 6 {
                    w.raw(t.id.unwrap_or(&[0; 16]));
                }
                w.i16(TOPIC_DENIED);
                if v >= 5 {
                    w.null_string(f); // error_message
                }
                w.tags(f);
            }
        }
        _ => return Ok(false),
    }
    w.tags(f);
    Ok(true)
}

/// `[topic [partition_index error_code]]` with `code` everywhere.
fn partition_codes(w: &mut Writer, ts: &[Topic<'_>], f: bool, by_id: bool, code: i16) {
    w.array(ts.len(), f);
    for t in ts {
        if by_id {
            w.raw(t.key);
        } else {
            w.string(t.key, f);
        }
        w.array(t.partitions.len(), f);
        for &p in &t.partitions {
            w.i32(p).i16(code).tags(f);
        }
        w.tags(f);
    }
}

fn offset_fetch(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    if v > 10 {
        return Ok(false);
    }
    if v < 8 {
        r.string(f)?; // group_id
        if v >= 3 {
            w.i32(0);
        }
        if v <= 1 {
            // No top-level error code yet: every listed partition carries it.
            let mut listed = Vec::new();
            for _ in 0..r.count(f)? {
                let name = r.text(f)?;
                let n = r.count(f)?;
                // Grown as read, not reserved: a count is bounded only by the
                // bytes left, four times fewer than it would reserve.
                let mut parts = Vec::new();
                for _ in 0..n {
                    parts.push(r.i32()?);
                }
                listed.push((name, parts));
            }
            w.array(listed.len(), f);
            for (name, parts) in &listed {
                w.string(name, f).array(parts.len(), f);
                for &p in parts {
                    // committed_offset, metadata, error_code
                    w.i32(p).i64(-1).string(b"", f).i16(GROUP_DENIED);
                }
            }
        } else {
            w.array(0, f).i16(GROUP_DENIED).tags(f);
        }
        return Ok(true);
    }
    w.i32(0);
    let mut groups = Vec::new();
    for _ in 0..r.count(f)? {
        groups.push(r.text(f)?);
        if v >= 9 {
            r.string(f)?; // member_id
            r.i32()?; // member_epoch
        }
        for _ in 0..r.count(f)? {
            if v >= 10 {
                r.uuid()?;
            } else {
                r.string(f)?;
            }
            r.skip_array(f, 4)?; // partition_indexes
            r.tags(f)?;
        }
        r.tags(f)?;
    }
    w.array(groups.len(), f);
    for g in &groups {
        w.string(g, f).array(0, f).i16(GROUP_DENIED).tags(f);
    }
    w.tags(f);
    Ok(true)
}

fn txn_offset_commit(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    if v > 5 {
        return Ok(false);
    }
    r.string(f)?; // transactional_id
    r.string(f)?; // group_id
    r.skip(10)?; // producer_id, producer_epoch
    if v >= 3 {
        r.i32()?; // generation_id
        r.string(f)?; // member_id
        r.string(f)?; // group_instance_id
    }
    let ts = topics(h, r, TopicList::Names)?;
    w.i32(0);
    partition_codes(w, &ts, f, false, TRANSACTION_DENIED);
    w.tags(f);
    Ok(true)
}

fn add_partitions_to_txn(
    h: &Header,
    r: &mut Reader<'_>,
    w: &mut Writer,
) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    // v4+ batches transactions (broker to broker); clients send v0–v3.
    if v > 3 {
        return Ok(false);
    }
    r.string(f)?; // transactional_id
    r.skip(10)?; // producer_id, producer_epoch
    let mut ts = Vec::new();
    for _ in 0..r.count(f)? {
        let key = r.text(f)?;
        let n = r.count(f)?;
        let mut partitions = Vec::new();
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        r.tags(f)?;
        ts.push(Topic {
            key,
            id: None,
            partitions,
        });
    }
    w.i32(0);
    partition_codes(w, &ts, f, false, TRANSACTION_DENIED);
    w.tags(f);
    Ok(true)
}

fn delete_groups(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let f = h.flexible;
    let mut groups = Vec::new();
    for _ in 0..r.count(f)? {
        groups.push(r.text(f)?);
    }
    w.i32(0).array(groups.len(), f);
    for g in &groups {
        w.string(g, f).i16(GROUP_DENIED).tags(f);
    }
    w.tags(f);
    Ok(true)
}

fn find_coordinator(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    let code = |key_type: i8| {
        if key_type == 1 {
            TRANSACTION_DENIED
        } else {
            GROUP_DENIED
        }
    };
    if v >= 4 {
        let key_type = r.i8()?;
        let mut keys = Vec::new();
        for _ in 0..r.count(f)? {
            keys.push(r.text(f)?);
        }
        w.i32(0).array(keys.len(), f);
        for k in &keys {
            w.string(k, f)
                .i32(-1)
                .string(b"", f)
                .i32(-1)
                .i16(code(key_type))
                .null_string(f)
                .tags(f);
        }
    } else {
        r.string(f)?; // key
        let key_type = if v >= 1 { r.i8()? } else { 0 };
        if v >= 1 {
            w.i32(0);
        }
        w.i16(code(key_type));
        if v >= 1 {
            w.null_string(f); // error_message
        }
        w.i32(-1).string(b"", f).i32(-1); // node_id, host, port
    }
    w.tags(f);
    Ok(true)
}

/// APIs whose response is `[throttle_time_ms] error_code` and fixed fields.
fn simple(h: &Header, r: &mut Reader<'_>, w: &mut Writer) -> Result<bool, ParseError> {
    let (f, v) = (h.flexible, h.version);
    match h.key {
        apis::JOIN_GROUP => {
            if v >= 2 {
                w.i32(0);
            }
            w.i16(GROUP_DENIED).i32(-1); // generation_id
            if v >= 7 {
                w.null_string(f).null_string(f); // protocol_type, protocol_name
            } else {
                w.string(b"", f);
            }
            w.string(b"", f); // leader
            if v >= 9 {
                w.raw(&[0]); // skip_assignment
            }
            w.string(b"", f).array(0, f); // member_id, members
        }
        apis::HEARTBEAT => {
            if v >= 1 {
                w.i32(0);
            }
            w.i16(GROUP_DENIED);
        }
        apis::LEAVE_GROUP => {
            if v >= 1 {
                w.i32(0);
            }
            w.i16(GROUP_DENIED);
            if v >= 3 {
                w.array(0, f); // members
            }
        }
        apis::SYNC_GROUP => {
            if v >= 1 {
                w.i32(0);
            }
            w.i16(GROUP_DENIED);
            if v >= 5 {
                w.null_string(f).null_string(f); // protocol_type, protocol_name
            }
            w.empty_bytes(f); // assignment
        }
        apis::OFFSET_DELETE => {
            w.i16(GROUP_DENIED).i32(0).array(0, f);
        }
        apis::INIT_PRODUCER_ID => {
            let code = if r.string(f)?.is_some() {
                TRANSACTION_DENIED
            } else {
                CLUSTER_DENIED
            };
            w.i32(0).i16(code).i64(-1).i16(-1);
            if v >= 6 {
                w.i64(-1).i16(-1); // ongoing_txn_producer_id, _epoch
            }
        }
        apis::ADD_OFFSETS_TO_TXN => {
            w.i32(0).i16(TRANSACTION_DENIED);
        }
        apis::END_TXN => {
            w.i32(0).i16(TRANSACTION_DENIED);
            if v >= 5 {
                w.i64(-1).i16(-1); // producer_id, producer_epoch
            }
        }
        _ => return Ok(false),
    }
    w.tags(f);
    Ok(true)
}
