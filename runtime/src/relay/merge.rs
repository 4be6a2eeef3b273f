//! Merging the nodes' flow streams into one, in time order, as Hubble Relay does:
//! responses wait in a bounded sort buffer; the oldest leaves when the buffer is
//! full, or when it has waited the drain timeout (so a slow or quiet node never
//! holds the stream back longer than that), or when every stream has ended.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use loupe_proto::observer::GetFlowsResponse;
use loupe_proto::time::timestamp_ns;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A response waiting in the sort buffer, ordered by its time (then arrival).
#[derive(Debug)]
struct Waiting {
    time_ns: i128,
    arrival: u64,
    since: Instant,
    response: GetFlowsResponse,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.time_ns, self.arrival) == (other.time_ns, other.arrival)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time_ns, self.arrival).cmp(&(other.time_ns, other.arrival))
    }
}

/// The time a response is sorted by: the flow's (or the response's) time.
pub fn response_time_ns(r: &GetFlowsResponse) -> i128 {
    use loupe_proto::observer::get_flows_response::ResponseTypes;
    let flow_time = match &r.response_types {
        Some(ResponseTypes::Flow(f)) => f.time.as_ref(),
        _ => None,
    };
    flow_time
        .or(r.time.as_ref())
        .map(timestamp_ns)
        .unwrap_or_default()
}

/// Sorts what arrives on `input` into `output`: at most `buffer` responses wait;
/// none waits longer than `drain`. Ends when `input` ends (after the buffer is
/// drained in order) or when `output` is closed.
pub async fn sort(
    mut input: mpsc::Receiver<GetFlowsResponse>,
    output: mpsc::Sender<Result<GetFlowsResponse, tonic::Status>>,
    buffer: usize,
    drain: Duration,
) {
    let buffer = buffer.max(1);
    let mut heap: BinaryHeap<Reverse<Waiting>> = BinaryHeap::new();
    let mut arrivals = 0u64;
    loop {
        // The oldest response's deadline (by when it arrived).
        let deadline = heap
            .iter()
            .map(|Reverse(w)| w.since)
            .min()
            .map(|s| s + drain);
        let next = match deadline {
            Some(at) => tokio::select! {
                r = input.recv() => Some(r),
                _ = tokio::time::sleep_until(at) => None,
            },
            None => Some(input.recv().await),
        };
        match next {
            Some(Some(response)) => {
                arrivals += 1;
                heap.push(Reverse(Waiting {
                    time_ns: response_time_ns(&response),
                    arrival: arrivals,
                    since: Instant::now(),
                    response,
                }));
                while heap.len() > buffer {
                    if !emit(&mut heap, &output).await {
                        return;
                    }
                }
            }
            // Every node's stream ended: the rest, in order.
            Some(None) => {
                while !heap.is_empty() {
                    if !emit(&mut heap, &output).await {
                        return;
                    }
                }
                return;
            }
            // Something waited the drain timeout: release everything as old.
            None => {
                let now = Instant::now();
                while heap
                    .iter()
                    .any(|Reverse(w)| now.duration_since(w.since) >= drain)
                {
                    if !emit(&mut heap, &output).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn emit(
    heap: &mut BinaryHeap<Reverse<Waiting>>,
    output: &mpsc::Sender<Result<GetFlowsResponse, tonic::Status>>,
) -> bool {
    match heap.pop() {
        Some(Reverse(w)) => output.send(Ok(w.response)).await.is_ok(),
        None => true,
    }
}

/// The last (or, with `first`, the first) `number` responses of a finished
/// query, in time order.
pub fn select(mut all: Vec<GetFlowsResponse>, number: u64, first: bool) -> Vec<GetFlowsResponse> {
    all.sort_by_key(response_time_ns);
    let n = usize::try_from(number).unwrap_or(usize::MAX);
    if number == 0 || all.len() <= n {
        return all;
    }
    if first {
        all.truncate(n);
        all
    } else {
        all.split_off(all.len() - n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_proto::flow::Flow;
    use loupe_proto::observer::get_flows_response::ResponseTypes;

    fn response(node: &str, seconds: i64) -> GetFlowsResponse {
        let time = prost_types::Timestamp { seconds, nanos: 0 };
        GetFlowsResponse {
            response_types: Some(ResponseTypes::Flow(Flow {
                time: Some(time),
                node_name: node.into(),
                ..Flow::default()
            })),
            node_name: node.into(),
            time: Some(time),
        }
    }

    fn seconds(r: &GetFlowsResponse) -> (String, i64) {
        (
            r.node_name.clone(),
            i64::try_from(response_time_ns(r) / 1_000_000_000).unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_arrivals_leave_in_time_order() {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out) = mpsc::channel(16);
        tokio::spawn(sort(rx, out_tx, 8, Duration::from_secs(1)));
        for (node, s) in [("b", 3), ("a", 1), ("c", 2), ("a", 4)] {
            tx.send(response(node, s)).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(r) = out.recv().await {
            got.push(seconds(&r.unwrap()));
        }
        let want: Vec<(String, i64)> = [("a", 1), ("c", 2), ("b", 3), ("a", 4)]
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_node_holds_nothing_past_the_drain_timeout() {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out) = mpsc::channel(16);
        tokio::spawn(sort(rx, out_tx, 100, Duration::from_secs(1)));
        tx.send(response("a", 10)).await.unwrap();
        let start = Instant::now();
        // The stream stays open (a node that says nothing more).
        let r = out.recv().await.unwrap().unwrap();
        assert_eq!(seconds(&r), ("a".to_string(), 10));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
            "{waited:?}"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_releases_the_oldest() {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out) = mpsc::channel(16);
        tokio::spawn(sort(rx, out_tx, 2, Duration::from_secs(3600)));
        for s in [5, 3, 4] {
            tx.send(response("a", s)).await.unwrap();
        }
        let r = tokio::time::timeout(Duration::from_secs(1), out.recv())
            .await
            .expect("released without waiting")
            .unwrap()
            .unwrap();
        assert_eq!(seconds(&r).1, 3);
        drop(tx);
    }

    #[test]
    fn a_finished_query_keeps_the_newest_or_the_oldest() {
        let all = || {
            vec![
                response("a", 4),
                response("b", 1),
                response("a", 2),
                response("b", 3),
            ]
        };
        let secs = |v: Vec<GetFlowsResponse>| v.iter().map(|r| seconds(r).1).collect::<Vec<_>>();
        assert_eq!(secs(select(all(), 2, false)), [3, 4]);
        assert_eq!(secs(select(all(), 2, true)), [1, 2]);
        assert_eq!(secs(select(all(), 0, false)), [1, 2, 3, 4]);
        assert_eq!(secs(select(all(), 10, false)), [1, 2, 3, 4]);
    }
}
