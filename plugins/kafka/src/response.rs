//! Response bodies: the top-level error code and a summary of the per-partition
//! (or per-topic, per-group) error codes, by API and version.

use loupe_sdk::ParseError;

use crate::apis;
use crate::wire::Reader;

/// The non-zero error codes of a response's partitions (topics for
/// CreateTopics, DeleteTopics and Metadata; groups for DeleteGroups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Errors {
    /// The first non-zero code (0 if none).
    pub(crate) first: i16,
    /// How many entries carried a non-zero code.
    pub(crate) count: u32,
}

impl Errors {
    fn note(&mut self, code: i16) {
        if code != 0 {
            if self.count == 0 {
                self.first = code;
            }
            self.count = self.count.saturating_add(1);
        }
    }
}

/// What a response says about errors.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    /// The response's top-level error code, for APIs that have one.
    pub(crate) error: Option<i16>,
    /// Per-partition errors, for APIs whose entries carry codes.
    pub(crate) entries: Option<Errors>,
}

/// Reads a response body (after its header) of API `key`, version `v`.
pub(crate) fn summary(
    key: i16,
    v: i16,
    f: bool,
    r: &mut Reader<'_>,
) -> Result<Summary, ParseError> {
    let mut s = Summary::default();
    let mut e = Errors::default();
    match key {
        apis::PRODUCE if v <= 13 => {
            for _ in 0..r.count(f)? {
                topic_key(r, f, v >= 13)?;
                for _ in 0..r.count(f)? {
                    r.i32()?; // index
                    e.note(r.i16()?);
                    r.skip(8)?; // base_offset
                    if v >= 2 {
                        r.skip(8)?; // log_append_time_ms
                    }
                    if v >= 5 {
                        r.skip(8)?; // log_start_offset
                    }
                    if v >= 8 {
                        for _ in 0..r.count(f)? {
                            r.i32()?; // batch_index
                            r.string(f)?; // batch_index_error_message
                            r.tags(f)?;
                        }
                        r.string(f)?; // error_message
                    }
                    r.tags(f)?;
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::FETCH if v <= 17 => {
            if v >= 1 {
                r.i32()?; // throttle_time_ms
            }
            if v >= 7 {
                s.error = Some(r.i16()?);
                r.i32()?; // session_id
            }
            for _ in 0..r.count(f)? {
                topic_key(r, f, v >= 13)?;
                for _ in 0..r.count(f)? {
                    r.i32()?; // partition_index
                    e.note(r.i16()?);
                    r.skip(8)?; // high_watermark
                    if v >= 4 {
                        r.skip(8)?; // last_stable_offset
                    }
                    if v >= 5 {
                        r.skip(8)?; // log_start_offset
                    }
                    if v >= 4 {
                        for _ in 0..r.count(f)? {
                            r.skip(16)?; // producer_id, first_offset
                            r.tags(f)?;
                        }
                    }
                    if v >= 11 {
                        r.i32()?; // preferred_read_replica
                    }
                    r.bytes(f)?; // records
                    r.tags(f)?;
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::LIST_OFFSETS => {
            if v >= 2 {
                r.i32()?; // throttle_time_ms
            }
            for _ in 0..r.count(f)? {
                r.string(f)?; // name
                for _ in 0..r.count(f)? {
                    r.i32()?; // partition_index
                    e.note(r.i16()?);
                    if v == 0 {
                        r.skip_array(f, 8)?; // old_style_offsets
                    } else {
                        r.skip(16)?; // timestamp, offset
                    }
                    if v >= 4 {
                        r.i32()?; // leader_epoch
                    }
                    r.tags(f)?;
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::METADATA => {
            if v >= 3 {
                r.i32()?; // throttle_time_ms
            }
            for _ in 0..r.count(f)? {
                r.i32()?; // node_id
                r.string(f)?; // host
                r.i32()?; // port
                if v >= 1 {
                    r.string(f)?; // rack
                }
                r.tags(f)?;
            }
            if v >= 2 {
                r.string(f)?; // cluster_id
            }
            if v >= 1 {
                r.i32()?; // controller_id
            }
            for _ in 0..r.count(f)? {
                e.note(r.i16()?);
                r.string(f)?; // name
                if v >= 10 {
                    r.uuid()?;
                }
                if v >= 1 {
                    r.i8()?; // is_internal
                }
                for _ in 0..r.count(f)? {
                    r.i16()?; // error_code (of the partition)
                    r.skip(8)?; // partition_index, leader_id
                    if v >= 7 {
                        r.i32()?; // leader_epoch
                    }
                    r.skip_array(f, 4)?; // replica_nodes
                    r.skip_array(f, 4)?; // isr_nodes
                    if v >= 5 {
                        r.skip_array(f, 4)?; // offline_replicas
                    }
                    r.tags(f)?;
                }
                if v >= 8 {
                    r.i32()?; // topic_authorized_operations
                }
                r.tags(f)?;
            }
            if (8..=10).contains(&v) {
                r.i32()?; // cluster_authorized_operations
            }
            if v >= 13 {
                s.error = Some(r.i16()?);
            }
            s.entries = Some(e);
        }
        apis::OFFSET_COMMIT | apis::TXN_OFFSET_COMMIT => {
            if key == apis::TXN_OFFSET_COMMIT || v >= 3 {
                r.i32()?; // throttle_time_ms
            }
            topic_partition_codes(r, f, key == apis::OFFSET_COMMIT && v >= 10, &mut e)?;
            s.entries = Some(e);
        }
        apis::ADD_PARTITIONS_TO_TXN if v <= 3 => {
            r.i32()?; // throttle_time_ms
            topic_partition_codes(r, f, false, &mut e)?;
            s.entries = Some(e);
        }
        apis::OFFSET_FETCH if v < 8 => {
            if v >= 3 {
                r.i32()?; // throttle_time_ms
            }
            offset_fetch_topics(r, f, v, &mut e)?;
            if v >= 2 {
                s.error = Some(r.i16()?);
            }
            s.entries = Some(e);
        }
        apis::OFFSET_FETCH if v <= 10 => {
            r.i32()?; // throttle_time_ms
            for _ in 0..r.count(f)? {
                r.string(f)?; // group_id
                offset_fetch_topics(r, f, v, &mut e)?;
                let code = r.i16()?;
                if s.error.is_none_or(|c| c == 0) {
                    s.error = Some(code);
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::CREATE_TOPICS => {
            if v >= 2 {
                r.i32()?; // throttle_time_ms
            }
            for _ in 0..r.count(f)? {
                r.string(f)?; // name
                if v >= 7 {
                    r.uuid()?;
                }
                e.note(r.i16()?);
                if v >= 1 {
                    r.string(f)?; // error_message
                }
                if v >= 5 {
                    r.skip(6)?; // num_partitions, replication_factor
                    for _ in 0..r.count(f)? {
                        r.string(f)?; // name
                        r.string(f)?; // value
                        r.skip(3)?; // read_only, config_source, is_sensitive
                        r.tags(f)?;
                    }
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::DELETE_TOPICS => {
            if v >= 1 {
                r.i32()?; // throttle_time_ms
            }
            for _ in 0..r.count(f)? {
                r.string(f)?; // name
                if v >= 6 {
                    r.uuid()?;
                }
                e.note(r.i16()?);
                if v >= 5 {
                    r.string(f)?; // error_message
                }
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::DELETE_GROUPS => {
            r.i32()?; // throttle_time_ms
            for _ in 0..r.count(f)? {
                r.string(f)?; // group_id
                e.note(r.i16()?);
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::FIND_COORDINATOR if v >= 4 => {
            r.i32()?; // throttle_time_ms
            for _ in 0..r.count(f)? {
                r.string(f)?; // key
                r.i32()?; // node_id
                r.string(f)?; // host
                r.i32()?; // port
                e.note(r.i16()?);
                r.string(f)?; // error_message
                r.tags(f)?;
            }
            s.entries = Some(e);
        }
        apis::API_VERSIONS => s.error = Some(r.i16()?),
        apis::OFFSET_DELETE => s.error = Some(r.i16()?),
        // `[throttle_time_ms] error_code …`
        apis::FIND_COORDINATOR
        | apis::JOIN_GROUP
        | apis::HEARTBEAT
        | apis::LEAVE_GROUP
        | apis::SYNC_GROUP
        | apis::INIT_PRODUCER_ID
        | apis::ADD_OFFSETS_TO_TXN
        | apis::END_TXN => {
            let throttled = match key {
                apis::JOIN_GROUP => v >= 2,
                apis::INIT_PRODUCER_ID | apis::ADD_OFFSETS_TO_TXN | apis::END_TXN => true,
                _ => v >= 1,
            };
            if throttled {
                r.i32()?;
            }
            s.error = Some(r.i16()?);
        }
        _ => {}
    }
    Ok(s)
}

/// A topic's name, or its id (UUID) in versions that name topics by id.
fn topic_key(r: &mut Reader<'_>, f: bool, by_id: bool) -> Result<(), ParseError> {
    if by_id {
        r.uuid().map(|_| ())
    } else {
        r.string(f).map(|_| ())
    }
}

/// `[topic [partition_index error_code]]`, with tagged fields when flexible.
fn topic_partition_codes(
    r: &mut Reader<'_>,
    f: bool,
    by_id: bool,
    e: &mut Errors,
) -> Result<(), ParseError> {
    for _ in 0..r.count(f)? {
        topic_key(r, f, by_id)?;
        for _ in 0..r.count(f)? {
            r.i32()?; // partition_index
            e.note(r.i16()?);
            r.tags(f)?;
        }
        r.tags(f)?;
    }
    Ok(())
}

/// OffsetFetch's topics (per group from v8).
fn offset_fetch_topics(
    r: &mut Reader<'_>,
    f: bool,
    v: i16,
    e: &mut Errors,
) -> Result<(), ParseError> {
    for _ in 0..r.count(f)? {
        topic_key(r, f, v >= 10)?;
        for _ in 0..r.count(f)? {
            r.i32()?; // partition_index
            r.skip(8)?; // committed_offset
            if v >= 5 {
                r.i32()?; // committed_leader_epoch
            }
            r.string(f)?; // metadata
            e.note(r.i16()?);
            r.tags(f)?;
        }
        r.tags(f)?;
    }
    Ok(())
}
