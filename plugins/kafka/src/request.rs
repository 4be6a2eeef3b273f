//! Request bodies: where each API's topic array starts, by version, and what
//! its entries begin with. Shared by the request fields and the deny replies.

use loupe_sdk::ParseError;

use crate::apis;
use crate::wire::Reader;

/// How the entries of a request's topic array begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicList {
    /// A struct whose first field is the topic name.
    Names,
    /// A struct whose first field is the topic id, then the (nullable) name
    /// (Metadata v10+).
    IdThenName,
    /// A struct whose first field is the topic id; no name (Produce v13+,
    /// Fetch v13+, OffsetCommit v10+, OffsetFetch v10+).
    Ids,
    /// A plain array of names (DeleteTopics v0–v5).
    Strings,
    /// No topic array follows (an OffsetFetch v8+ request without groups).
    Empty,
}

/// What comes before the topic array.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prefix {
    pub(crate) list: TopicList,
    /// Produce `acks`.
    pub(crate) acks: Option<i16>,
    /// Produce with a `transactional_id`.
    pub(crate) transactional: bool,
}

impl Prefix {
    fn of(list: TopicList) -> Self {
        Self {
            list,
            acks: None,
            transactional: false,
        }
    }
}

/// Reads the body of a request (after its header) up to its topic array;
/// `None` for APIs and versions whose topics this parser does not read.
pub(crate) fn to_topics(
    key: i16,
    v: i16,
    f: bool,
    r: &mut Reader<'_>,
) -> Result<Option<Prefix>, ParseError> {
    let named = |v: i16, first_id: i16| {
        if v >= first_id {
            TopicList::Ids
        } else {
            TopicList::Names
        }
    };
    Ok(Some(match key {
        apis::PRODUCE if v <= 13 => {
            let transactional = v >= 3 && r.string(f)?.is_some();
            let acks = r.i16()?;
            r.i32()?; // timeout_ms
            Prefix {
                list: named(v, 13),
                acks: Some(acks),
                transactional,
            }
        }
        apis::FETCH if v <= 17 => {
            if v < 15 {
                r.i32()?; // replica_id (a tagged field from v15)
            }
            r.skip(8)?; // max_wait_ms, min_bytes
            if v >= 3 {
                r.i32()?; // max_bytes
            }
            if v >= 4 {
                r.i8()?; // isolation_level
            }
            if v >= 7 {
                r.skip(8)?; // session_id, session_epoch
            }
            Prefix::of(named(v, 13))
        }
        apis::LIST_OFFSETS => {
            r.i32()?; // replica_id
            if v >= 2 {
                r.i8()?; // isolation_level
            }
            Prefix::of(TopicList::Names)
        }
        apis::METADATA => Prefix::of(if v >= 10 {
            TopicList::IdThenName
        } else {
            TopicList::Names
        }),
        apis::OFFSET_COMMIT if v <= 10 => {
            r.string(f)?; // group_id
            if v >= 1 {
                r.i32()?; // generation_id_or_member_epoch
                r.string(f)?; // member_id
            }
            if v >= 7 {
                r.string(f)?; // group_instance_id
            }
            if (2..=4).contains(&v) {
                r.skip(8)?; // retention_time_ms
            }
            Prefix::of(named(v, 10))
        }
        apis::OFFSET_FETCH if v < 8 => {
            r.string(f)?; // group_id
            Prefix::of(TopicList::Names)
        }
        apis::OFFSET_FETCH if v <= 10 => {
            // Batched groups: the first group's topics.
            if r.count(f)? == 0 {
                Prefix::of(TopicList::Empty)
            } else {
                r.string(f)?; // group_id
                if v >= 9 {
                    r.string(f)?; // member_id
                    r.i32()?; // member_epoch
                }
                Prefix::of(named(v, 10))
            }
        }
        apis::CREATE_TOPICS => Prefix::of(TopicList::Names),
        apis::DELETE_TOPICS => Prefix::of(if v >= 6 {
            TopicList::Names
        } else {
            TopicList::Strings
        }),
        _ => return Ok(None),
    }))
}

/// The topic count and the first topic name's range, from the start of the
/// topic array.
pub(crate) fn first_topic(
    list: TopicList,
    f: bool,
    r: &mut Reader<'_>,
) -> Result<(usize, Option<(usize, usize)>), ParseError> {
    if list == TopicList::Empty {
        return Ok((0, None));
    }
    let count = r.count(f)?;
    if count == 0 {
        return Ok((0, None));
    }
    let name = match list {
        TopicList::Names | TopicList::Strings => r.string(f)?,
        TopicList::IdThenName => {
            r.uuid()?;
            r.string(f)?
        }
        TopicList::Ids | TopicList::Empty => None,
    };
    Ok((count, name))
}
