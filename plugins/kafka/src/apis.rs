//! Kafka API keys: names, and the first version of each that uses the flexible
//! encoding (compact strings and arrays, tagged fields; KIP-482).

/// (name, first flexible version or `None` if no version is flexible), by API key.
const APIS: &[(&str, Option<i16>)] = &[
    ("Produce", Some(9)),
    ("Fetch", Some(12)),
    ("ListOffsets", Some(6)),
    ("Metadata", Some(9)),
    ("LeaderAndIsr", Some(4)),
    ("StopReplica", Some(2)),
    ("UpdateMetadata", Some(6)),
    ("ControlledShutdown", Some(3)),
    ("OffsetCommit", Some(8)),
    ("OffsetFetch", Some(6)),
    ("FindCoordinator", Some(3)),
    ("JoinGroup", Some(6)),
    ("Heartbeat", Some(4)),
    ("LeaveGroup", Some(4)),
    ("SyncGroup", Some(4)),
    ("DescribeGroups", Some(5)),
    ("ListGroups", Some(3)),
    ("SaslHandshake", None),
    ("ApiVersions", Some(3)),
    ("CreateTopics", Some(5)),
    ("DeleteTopics", Some(4)),
    ("DeleteRecords", Some(2)),
    ("InitProducerId", Some(2)),
    ("OffsetForLeaderEpoch", Some(4)),
    ("AddPartitionsToTxn", Some(3)),
    ("AddOffsetsToTxn", Some(3)),
    ("EndTxn", Some(3)),
    ("WriteTxnMarkers", Some(1)),
    ("TxnOffsetCommit", Some(3)),
    ("DescribeAcls", Some(2)),
    ("CreateAcls", Some(2)),
    ("DeleteAcls", Some(2)),
    ("DescribeConfigs", Some(4)),
    ("AlterConfigs", Some(2)),
    ("AlterReplicaLogDirs", Some(2)),
    ("DescribeLogDirs", Some(2)),
    ("SaslAuthenticate", Some(2)),
    ("CreatePartitions", Some(2)),
    ("CreateDelegationToken", Some(2)),
    ("RenewDelegationToken", Some(2)),
    ("ExpireDelegationToken", Some(2)),
    ("DescribeDelegationToken", Some(2)),
    ("DeleteGroups", Some(2)),
    ("ElectLeaders", Some(2)),
    ("IncrementalAlterConfigs", Some(1)),
    ("AlterPartitionReassignments", Some(0)),
    ("ListPartitionReassignments", Some(0)),
    ("OffsetDelete", None),
    ("DescribeClientQuotas", Some(1)),
    ("AlterClientQuotas", Some(1)),
    ("DescribeUserScramCredentials", Some(0)),
    ("AlterUserScramCredentials", Some(0)),
    ("Vote", Some(0)),
    ("BeginQuorumEpoch", Some(1)),
    ("EndQuorumEpoch", Some(1)),
    ("DescribeQuorum", Some(0)),
    ("AlterPartition", Some(0)),
    ("UpdateFeatures", Some(0)),
    ("Envelope", Some(0)),
    ("FetchSnapshot", Some(0)),
    ("DescribeCluster", Some(0)),
    ("DescribeProducers", Some(0)),
    ("BrokerRegistration", Some(0)),
    ("BrokerHeartbeat", Some(0)),
    ("UnregisterBroker", Some(0)),
    ("DescribeTransactions", Some(0)),
    ("ListTransactions", Some(0)),
    ("AllocateProducerIds", Some(0)),
    ("ConsumerGroupHeartbeat", Some(0)),
    ("ConsumerGroupDescribe", Some(0)),
    ("ControllerRegistration", Some(0)),
    ("GetTelemetrySubscriptions", Some(0)),
    ("PushTelemetry", Some(0)),
    ("AssignReplicasToDirs", Some(0)),
    ("ListClientMetricsResources", Some(0)),
    ("DescribeTopicPartitions", Some(0)),
];

/// API keys.
pub(crate) const PRODUCE: i16 = 0;
pub(crate) const FETCH: i16 = 1;
pub(crate) const LIST_OFFSETS: i16 = 2;
pub(crate) const METADATA: i16 = 3;
pub(crate) const OFFSET_COMMIT: i16 = 8;
pub(crate) const OFFSET_FETCH: i16 = 9;
pub(crate) const FIND_COORDINATOR: i16 = 10;
pub(crate) const JOIN_GROUP: i16 = 11;
pub(crate) const HEARTBEAT: i16 = 12;
pub(crate) const LEAVE_GROUP: i16 = 13;
pub(crate) const SYNC_GROUP: i16 = 14;
pub(crate) const API_VERSIONS: i16 = 18;
pub(crate) const CREATE_TOPICS: i16 = 19;
pub(crate) const DELETE_TOPICS: i16 = 20;
pub(crate) const INIT_PRODUCER_ID: i16 = 22;
pub(crate) const ADD_PARTITIONS_TO_TXN: i16 = 24;
pub(crate) const ADD_OFFSETS_TO_TXN: i16 = 25;
pub(crate) const END_TXN: i16 = 26;
pub(crate) const TXN_OFFSET_COMMIT: i16 = 28;
pub(crate) const DELETE_GROUPS: i16 = 42;
pub(crate) const OFFSET_DELETE: i16 = 47;

/// The API's name, if the key is known.
pub(crate) fn name(key: i16) -> Option<&'static str> {
    usize::try_from(key)
        .ok()
        .and_then(|k| APIS.get(k))
        .map(|a| a.0)
}

/// Whether `version` of API `key` uses the flexible encoding.
pub(crate) fn flexible(key: i16, version: i16) -> bool {
    usize::try_from(key)
        .ok()
        .and_then(|k| APIS.get(k))
        .and_then(|a| a.1)
        .is_some_and(|first| version >= first)
}
