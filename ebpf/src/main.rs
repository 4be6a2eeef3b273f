//! Loupe's TC datapath.
//!
//! Two programs run on the host-side veth of every endpoint: `loupe_from_endpoint`
//! (TC ingress: the endpoint's egress traffic) and `loupe_to_endpoint` (TC egress: the
//! endpoint's ingress traffic). Each hook enforces its own endpoint's policy for its
//! direction, tracks connections, counts packets and reports connection-level events.
//!
//! Per packet: parse, then conntrack (reply? established?), and only for the first
//! packet of a connection an ipcache lookup and at most two policy lookups (the
//! remote identity, then the any-identity wildcard), each an LPM trie lookup whose
//! cost does not depend on the number of rules.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple,
    },
    helpers::{bpf_ktime_get_boot_ns, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray, RingBuf, lpm_trie::Key,
    },
    programs::TcContext,
};
use loupe_common::{
    COUNTER_ENTRIES, COUNTER_PAYLOAD, Counter, CtKey, CtValue, DatapathConfig, EndpointInfo,
    FlowEvent, IpcacheValue, MAX_PAYLOAD_COPY, POLICY_PREFIX_FULL, PayloadEvent, PolicyKey,
    PolicyValue, action, attribution, counter_index, ct_flags, ct_status, direction, drop_reason,
    endpoint_flags, event_kind, identity, monitor, policy_flags, proxy, sizes,
};

#[map(name = "LOUPE_IPCACHE")]
static IPCACHE: LpmTrie<[u8; 16], IpcacheValue> = LpmTrie::pinned(sizes::IPCACHE, 0);

#[map(name = "LOUPE_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(sizes::ENDPOINTS, 0);

#[map(name = "LOUPE_POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(sizes::POLICY, 0);

#[map(name = "LOUPE_CT")]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(sizes::CONNTRACK, 0);

#[map(name = "LOUPE_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(sizes::EVENTS_BYTES, 0);

#[map(name = "LOUPE_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);

#[map(name = "LOUPE_PAYLOAD")]
static PAYLOAD: PerfEventArray<PayloadEvent> = PerfEventArray::pinned(0);

/// Ports whose connections are L7-visible without policy asking (the agent's
/// `l7.<protocol>Protocol` switches): host-order port -> 1.
#[map(name = "LOUPE_L7_PORTS")]
static L7_PORTS: HashMap<u16, u8> = HashMap::pinned(sizes::L7_PORTS, 0);

#[map(name = "LOUPE_CONFIG")]
static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Per-CPU scratch space: the parsed packet and a conntrack key live here, not on
/// the 512-byte BPF stack.
#[map(name = "LOUPE_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

struct Scratch {
    pkt: Packet,
    key: CtKey,
}

/// Unread event bytes past which the reader is woken (see `emit`).
const WAKEUP_BYTES: u64 = 128 * 1024;

// The bindings type these differently per target architecture.
#[allow(clippy::unnecessary_cast)]
const TC_PASS: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const TC_DROP: i32 = TC_ACT_SHOT as i32;

use loupe_common::COUNTER_LOST_EVENTS as LOST_EVENTS;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;

/// A parsed packet, addresses as 16-byte (IPv4-mapped) arrays.
struct Packet {
    family: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    /// Port used for the policy lookup (ICMP: the type).
    policy_port: u16,
    tcp_flags: u8,
    /// TCP sequence number.
    seq: u32,
    /// TCP payload bytes.
    payload_len: u32,
    /// ICMP error or neighbour discovery: never tracked, never policed.
    control: bool,
    /// A non-first fragment: no L4 header.
    fragment: bool,
    len: u32,
}

enum ParseError {
    /// Not IP (ARP, LLDP...): not ours to police.
    NotIp,
    /// A malformed or truncated header.
    Invalid(u8),
}

#[classifier]
pub(crate) fn loupe_from_endpoint(ctx: TcContext) -> i32 {
    process(&ctx, direction::EGRESS)
}

#[classifier]
pub(crate) fn loupe_to_endpoint(ctx: TcContext) -> i32 {
    process(&ctx, direction::INGRESS)
}

#[classifier]
pub(crate) fn loupe_from_netdev(ctx: TcContext) -> i32 {
    from_netdev(&ctx)
}

/// A packet arriving on a node's device. A new TCP connection to a local
/// endpoint whose ingress policy enforces L7 rules for the client goes to the
/// proxy (its client's hook, on another node or nowhere, could not redirect
/// it); later packets of it follow by the mark. Everything else passes on to
/// the endpoint's own hook, which decides and reports as always.
#[inline(always)]
fn from_netdev(ctx: &TcContext) -> i32 {
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if config.proxy_port == 0 {
        return TC_PASS;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_PASS;
    };
    // SAFETY: per-CPU slot, used by one program invocation at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    if parse(ctx, &mut scratch.pkt).is_err() {
        // The endpoint's hook counts and judges it.
        return TC_PASS;
    }
    let pkt = &scratch.pkt;
    if pkt.proto != IPPROTO_TCP || pkt.fragment || pkt.control {
        return TC_PASS;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    forward_key(pkt, direction::FROM_NETDEV, 0, &mut scratch.key);
    let opening = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !opening {
        if let Some(ct) = CONNTRACK.get_ptr_mut(&scratch.key) {
            // SAFETY: the pointer is into a map value the kernel keeps alive for this call.
            let ct = unsafe { &mut *ct };
            ct.last_seen_ns = now;
            ct.flags |= close_flags(pkt.tcp_flags, ct_flags::FIN_FWD, ct.flags);
            ctx.set_mark(proxy::TO_PROXY);
        }
        return TC_PASS;
    }
    let _ = CONNTRACK.remove(&scratch.key);
    let server = lookup_ipcache(&pkt.daddr);
    if server.ep_id == 0 {
        return TC_PASS;
    }
    let client = lookup_identity(&pkt.saddr);
    let endpoint = EndpointInfo {
        ep_id: server.ep_id,
        flags: 0,
        identity: server.identity,
    };
    let generation = config.active_gen & 1;
    // Unenforced lookup: only an allow's L7 flag matters here; a denied
    // connection is dropped, and reported, at the server's own hook.
    match verdict(
        &endpoint,
        (generation, config.policy_rev),
        direction::INGRESS,
        client,
        pkt,
        false,
    ) {
        Ok(allowed) if allowed.flags & policy_flags::L7_ENFORCE != 0 => {}
        _ => return TC_PASS,
    }
    let entry = CtValue {
        created_ns: now,
        last_seen_ns: now,
        policy_rev: config.policy_rev,
        remote_identity: client,
        flags: ct_flags::PROXY | ct_flags::OPENED_BY_SYN,
        pad: [0; 2],
        syn_seq: pkt.seq,
    };
    if let Err(err) = CONNTRACK.insert(&scratch.key, &entry, BPF_NOEXIST as u64) {
        // -EEXIST: another CPU steered a copy of this SYN first; steer this one too.
        if err != -17 {
            // No entry, no steering: the server's hook fails the connection closed.
            return TC_PASS;
        }
    }
    // SAFETY: the context pointer is the program's `__sk_buff`, valid for the call.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    if steer(ctx, pkt, config.proxy_port, true).is_err() {
        // No proxy listening: the SYN goes on, unmarked, to the server's hook,
        // which drops it and says so (L7 enforcement fails closed).
        ctx.set_mark(mark);
        let _ = CONNTRACK.remove(&scratch.key);
    }
    TC_PASS
}

#[inline(always)]
fn process(ctx: &TcContext, dir: u8) -> i32 {
    let ifindex = ifindex(ctx);
    // SAFETY: the value is copied out immediately; endpoints are only replaced whole.
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => *ep,
        None => return TC_PASS,
    };
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let generation = config.active_gen & 1;
    let enforced = ep.flags & endpoint_flags::enforce(dir, generation) != 0;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_PASS;
    };
    // SAFETY: per-CPU slot, used by one program invocation at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    let pkt = &mut scratch.pkt;
    if let Err(err) = parse(ctx, pkt) {
        return match err {
            ParseError::NotIp => TC_PASS,
            ParseError::Invalid(reason) if enforced => {
                count(dir, reason, ctx.len());
                TC_DROP
            }
            ParseError::Invalid(_) => {
                count(dir, drop_reason::NONE, ctx.len());
                TC_PASS
            }
        };
    }
    let pkt = &scratch.pkt;
    if pkt.control {
        count(dir, drop_reason::NONE, pkt.len);
        return TC_PASS;
    }
    if pkt.fragment {
        if enforced {
            return drop(
                ctx,
                &ep,
                dir,
                pkt,
                identity::ANY,
                drop_reason::IP_FRAGMENTATION_NOT_SUPPORTED,
            );
        }
        count(dir, drop_reason::NONE, pkt.len);
        return TC_PASS;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let policy_rev = config.policy_rev;

    // A reply to a connection this endpoint tracks in the other direction. A pure
    // SYN opens a connection and is never a reply: an entry the other way round
    // is then stale (a late packet of a connection already forgotten) and goes,
    // so neither the SYN nor the connection's later packets skip its policy and
    // redirect decisions.
    let opening = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    reverse_key(pkt, opposite(dir), ep.ep_id, &mut scratch.key);
    if opening {
        let _ = CONNTRACK.remove(&scratch.key);
    } else if let Some(ct) = CONNTRACK.get_ptr_mut(&scratch.key) {
        // SAFETY: the pointer is into a map value the kernel keeps alive for this call.
        let ct = unsafe { &mut *ct };
        ct.last_seen_ns = now;
        let first_reply = ct.flags & ct_flags::SEEN_REPLY == 0;
        let closing = close_flags(pkt.tcp_flags, ct_flags::FIN_REV, ct.flags);
        ct.flags |= ct_flags::SEEN_REPLY | closing;
        if ct.flags & ct_flags::L7 != 0 {
            copy_payload(ctx, &ep, dir, pkt, ct.remote_identity);
        }
        if ct.flags & ct_flags::FROM_PROXY != 0 {
            // The server answers the proxy's upstream socket, which is bound to the
            // client's address: local routing delivers it there, not to the client.
            ctx.set_mark(proxy::TO_PROXY);
        }
        if reports(config.monitor, dir, pkt.proto, first_reply, closing) {
            trace(ctx, &ep, dir, pkt, ct.remote_identity, ct_status::REPLY, 0);
        }
        count(dir, drop_reason::NONE, pkt.len);
        return TC_PASS;
    }

    forward_key(pkt, dir, ep.ep_id, &mut scratch.key);
    if let Some(ct) = CONNTRACK.get_ptr_mut(&scratch.key) {
        // SAFETY: as above.
        let ct = unsafe { &mut *ct };
        if opening
            && (ct.flags & (ct_flags::FIN_FWD | ct_flags::FIN_REV | ct_flags::RST) != 0
                || ct.flags & ct_flags::OPENED_BY_SYN == 0
                || ct.syn_seq != pkt.seq
                || ct.policy_rev != policy_rev)
        {
            // A SYN that is not a retransmission of the one that opened this entry:
            // the client reused the port of a closed, forgotten or never-finished
            // connection (or a stray mid-stream packet created the entry). Or a
            // retransmission after a policy change, whose redirect may differ now.
            // A new connection, decided afresh below (policy, redirect, L7 copy).
            let _ = CONNTRACK.remove(&scratch.key);
        } else {
            if ct.policy_rev != policy_rev {
                // Policy changed since this connection was allowed: check it once more.
                let remote_identity = lookup_identity(remote_addr(pkt, dir));
                match verdict(
                    &ep,
                    (generation, policy_rev),
                    dir,
                    remote_identity,
                    pkt,
                    enforced,
                ) {
                    Ok(_) => {
                        ct.policy_rev = policy_rev;
                        ct.remote_identity = remote_identity;
                    }
                    Err(denied) => {
                        let _ = CONNTRACK.remove(&scratch.key);
                        return drop_by(ctx, &ep, dir, pkt, remote_identity, denied);
                    }
                }
            }
            ct.last_seen_ns = now;
            let closing = close_flags(pkt.tcp_flags, ct_flags::FIN_FWD, ct.flags);
            ct.flags |= closing;
            if ct.flags & ct_flags::L7 != 0 {
                copy_payload(ctx, &ep, dir, pkt, ct.remote_identity);
            }
            if ct.flags & ct_flags::PROXY != 0 {
                // A retransmitted SYN needs the listener again; everything else finds
                // the proxy's socket by local routing.
                if let Err(reason) = steer(ctx, pkt, config.proxy_port, opening) {
                    let remote_identity = ct.remote_identity;
                    return drop(ctx, &ep, dir, pkt, remote_identity, reason);
                }
            }
            if reports(config.monitor, dir, pkt.proto, false, closing) {
                trace(
                    ctx,
                    &ep,
                    dir,
                    pkt,
                    ct.remote_identity,
                    ct_status::ESTABLISHED,
                    0,
                );
            }
            count(dir, drop_reason::NONE, pkt.len);
            return TC_PASS;
        }
    }

    // The first packet of a connection.
    let remote = lookup_ipcache(remote_addr(pkt, dir));
    let remote_identity = remote.identity;
    let (policy_flags, policy, enforce_l7) = match verdict(
        &ep,
        (generation, policy_rev),
        dir,
        remote_identity,
        pkt,
        enforced,
    ) {
        Ok(allowed) => (allowed.flags, allowed.policy, allowed.enforce_l7),
        Err(denied) => return drop_by(ctx, &ep, dir, pkt, remote_identity, denied),
    };
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    let l7 = if dir == direction::INGRESS && mark & proxy::MARK_MASK == proxy::FROM_PROXY {
        // The proxy's upstream connection: enforced at L7 already, L4 checked
        // above with the client's identity; no redirect, no payload copy.
        ct_flags::FROM_PROXY
    } else if redirects(&ep, generation, dir, &remote, pkt, policy_flags, &config) {
        ct_flags::PROXY
    } else if policy_flags & policy_flags::L7 != 0
        // Globally visible ports are observed where the server is: the ingress hook.
        || (dir == direction::INGRESS
            && pkt.proto == IPPROTO_TCP
            && unsafe { L7_PORTS.get(&pkt.dport) }.is_some())
    {
        ct_flags::L7
    } else {
        0
    };
    if l7 != ct_flags::FROM_PROXY
        && dir == direction::INGRESS
        && pkt.proto == IPPROTO_TCP
        && enforce_l7
        && config.proxy_port != 0
    {
        // A connection to a port with enforcing L7 rules that did not pass the
        // proxy: its client's hook could not redirect it (the host, the world,
        // another node; `bpf_sk_assign` works only at a local client's hook). Its
        // requests cannot be checked here, so it fails closed.
        return drop(
            ctx,
            &ep,
            dir,
            pkt,
            remote_identity,
            drop_reason::PROXY_REDIRECTION_NOT_SUPPORTED,
        );
    }
    let entry = CtValue {
        created_ns: now,
        last_seen_ns: now,
        policy_rev,
        remote_identity,
        flags: l7
            | close_flags(pkt.tcp_flags, ct_flags::FIN_FWD, 0)
            | if opening { ct_flags::OPENED_BY_SYN } else { 0 },
        pad: [0; 2],
        syn_seq: if opening { pkt.seq } else { 0 },
    };
    if let Err(err) = CONNTRACK.insert(&scratch.key, &entry, BPF_NOEXIST as u64) {
        // -EEXIST: another CPU created it first, which is fine.
        if err != -17 {
            return drop(
                ctx,
                &ep,
                dir,
                pkt,
                remote_identity,
                drop_reason::CT_MAP_INSERTION_FAILED,
            );
        }
    }
    if l7 == ct_flags::PROXY
        && let Err(reason) = steer(ctx, pkt, config.proxy_port, true)
    {
        let _ = CONNTRACK.remove(&scratch.key);
        return drop(ctx, &ep, dir, pkt, remote_identity, reason);
    }
    if l7 == ct_flags::L7 {
        // The SYN: the L7 path learns who the client is and where both streams start.
        copy_payload(ctx, &ep, dir, pkt, remote_identity);
    }
    emit(
        ctx,
        &ep,
        dir,
        pkt,
        remote_identity,
        event_kind::TRACE,
        drop_reason::NONE,
        ct_status::NEW,
        policy_flags,
        policy,
    );
    count(dir, drop_reason::NONE, pkt.len);
    TC_PASS
}

/// Whether a packet of a known connection is reported as a trace event, by the
/// configured aggregation ([`monitor`]): `first_reply` is the connection's first
/// packet back, `closing` the close flags it newly set. A connection's first
/// packet (with its policy verdict) and drops are reported elsewhere, always.
#[inline(always)]
fn reports(config: u8, dir: u8, proto: u8, first_reply: bool, closing: u16) -> bool {
    let level = config & monitor::LEVEL_MASK;
    if level == monitor::NONE {
        return true;
    }
    // `lowest` and above: only the hook into the endpoint (`to-endpoint`).
    if dir != direction::INGRESS {
        return false;
    }
    if level < monitor::MEDIUM {
        return true;
    }
    let tcp = proto == IPPROTO_TCP;
    (first_reply && (!tcp || config & monitor::FLAG_SYN != 0))
        || (closing & (ct_flags::FIN_FWD | ct_flags::FIN_REV) != 0
            && config & monitor::FLAG_FIN != 0)
        || (closing & ct_flags::RST != 0 && config & monitor::FLAG_RST != 0)
}

/// Whether a new connection leaving an endpoint goes through the L7 proxy: a TCP
/// SYN whose port carries enforcing L7 rules in the client's egress policy or in
/// the (local) server's ingress policy for the client's identity. Decided here, at
/// the client's hook, because `bpf_sk_assign` works only on TC ingress.
#[inline(always)]
fn redirects(
    ep: &EndpointInfo,
    generation: u8,
    dir: u8,
    remote: &IpcacheValue,
    pkt: &Packet,
    policy_flags: u8,
    config: &DatapathConfig,
) -> bool {
    if dir != direction::EGRESS
        || config.proxy_port == 0
        || pkt.proto != IPPROTO_TCP
        || pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
    {
        return false;
    }
    if policy_flags & policy_flags::L7_ENFORCE != 0 {
        return true;
    }
    if remote.ep_id == 0 {
        return false;
    }
    let server = EndpointInfo {
        ep_id: remote.ep_id,
        flags: 0,
        identity: remote.identity,
    };
    // Unenforced lookup: only the flags of an allow entry matter here; a denied
    // connection is dropped at the server's own hook as before.
    matches!(
        verdict(&server, (generation, config.policy_rev), direction::INGRESS, ep.identity, pkt, false),
        Ok(allowed) if allowed.flags & policy_flags::L7_ENFORCE != 0
    )
}

/// Steers a packet of a proxied connection to the proxy: the mark selects local
/// routing; a SYN is also assigned to the proxy's listener (found by the proxy
/// port on the original destination address), since local routing alone would
/// look for a listener on the original port.
#[inline(always)]
fn steer(ctx: &TcContext, pkt: &Packet, proxy_port: u16, syn: bool) -> Result<(), u8> {
    ctx.set_mark(proxy::TO_PROXY);
    if !syn {
        return Ok(());
    }
    // SAFETY: a plain C union of integers; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if pkt.family == 4 {
        let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        v4.saddr = u32::from_ne_bytes([pkt.saddr[12], pkt.saddr[13], pkt.saddr[14], pkt.saddr[15]]);
        v4.daddr = u32::from_ne_bytes([pkt.daddr[12], pkt.daddr[13], pkt.daddr[14], pkt.daddr[15]]);
        v4.sport = pkt.sport.to_be();
        v4.dport = proxy_port.to_be();
        core::mem::size_of_val(v4) as u32
    } else {
        let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        let mut i = 0;
        while i < 4 {
            v6.saddr[i] = u32::from_ne_bytes([
                pkt.saddr[4 * i],
                pkt.saddr[4 * i + 1],
                pkt.saddr[4 * i + 2],
                pkt.saddr[4 * i + 3],
            ]);
            v6.daddr[i] = u32::from_ne_bytes([
                pkt.daddr[4 * i],
                pkt.daddr[4 * i + 1],
                pkt.daddr[4 * i + 2],
                pkt.daddr[4 * i + 3],
            ]);
            i += 1;
        }
        v6.sport = pkt.sport.to_be();
        v6.dport = proxy_port.to_be();
        core::mem::size_of_val(v6) as u32
    };
    // SAFETY: helper calls with the program's own context and a stack tuple; the
    // returned socket is released before returning, as the verifier demands.
    unsafe {
        let sk = bpf_skc_lookup_tcp(ctx.as_ptr(), &mut tuple, size, u64::MAX, 0);
        if sk.is_null() {
            return Err(drop_reason::SOCKET_LOOKUP_FAILED);
        }
        let assigned = bpf_sk_assign(ctx.as_ptr(), sk.cast(), 0);
        bpf_sk_release(sk.cast());
        if assigned != 0 {
            return Err(drop_reason::SOCKET_ASSIGN_FAILED);
        }
    }
    Ok(())
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is the program's `__sk_buff`, valid for the call.
    unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex }
}

#[inline(always)]
fn opposite(dir: u8) -> u8 {
    if dir == direction::INGRESS {
        direction::EGRESS
    } else {
        direction::INGRESS
    }
}

/// Conntrack flags a FIN or RST adds, if they are new.
#[inline(always)]
fn close_flags(tcp_flags: u8, fin_flag: u16, current: u16) -> u16 {
    let mut add = 0;
    if tcp_flags & TCP_FIN != 0 && current & fin_flag == 0 {
        add |= fin_flag;
    }
    if tcp_flags & TCP_RST != 0 && current & ct_flags::RST == 0 {
        add |= ct_flags::RST;
    }
    add
}

#[inline(always)]
fn remote_addr(pkt: &Packet, dir: u8) -> &[u8; 16] {
    if dir == direction::INGRESS {
        &pkt.saddr
    } else {
        &pkt.daddr
    }
}

#[inline(always)]
fn lookup_identity(addr: &[u8; 16]) -> u32 {
    lookup_ipcache(addr).identity
}

#[inline(always)]
fn lookup_ipcache(addr: &[u8; 16]) -> IpcacheValue {
    let key = Key::new(128, *addr);
    match IPCACHE.get(&key) {
        Some(v) => *v,
        None => IpcacheValue {
            identity: identity::WORLD,
            ep_id: 0,
            flags: 0,
        },
    }
}

/// A connection policy allows: the flags of the allowing entries and the policy
/// tag of the most specific one (the remote identity's before any identity's).
struct Allowed {
    flags: u8,
    policy: u16,
    /// The most specific allowing entry asks for L7 enforcement (the remote
    /// identity's own entry when there is one: the host's implicit allow is not
    /// overridden by a wildcard-peer L7 rule).
    enforce_l7: bool,
}

/// A connection policy drops: why, and the tag of the deny entry (0 for default deny).
struct Denied {
    reason: u8,
    policy: u16,
}

/// The policy decision for a new connection.
#[inline(always)]
fn verdict(
    ep: &EndpointInfo,
    (generation, rev): (u8, u32),
    dir: u8,
    remote: u32,
    pkt: &Packet,
    enforced: bool,
) -> Result<Allowed, Denied> {
    let mut flags = 0u8;
    let mut allowed = false;
    let mut policy = 0u16;
    let mut specific: Option<u8> = None;
    // Straight-line on purpose: an array of `Option`s leaves uninitialised bytes the
    // verifier refuses to copy.
    for identity in [remote, identity::ANY] {
        let key = Key::new(
            POLICY_PREFIX_FULL,
            PolicyKey {
                generation,
                ep_id: ep.ep_id.to_be_bytes(),
                dir,
                identity: identity.to_be_bytes(),
                proto: pkt.proto,
                port: pkt.policy_port.to_be_bytes(),
            },
        );
        if let Some(entry) = POLICY.get(&key) {
            if entry.action == action::DENY {
                return Err(Denied {
                    reason: drop_reason::POLICY_DENY,
                    policy: attribution::tag(rev, entry.rule),
                });
            }
            if entry.action == action::ALLOW {
                if !allowed {
                    policy = attribution::tag(rev, entry.rule);
                    specific = Some(entry.flags);
                }
                allowed = true;
                flags |= entry.flags;
            }
        }
    }
    if allowed || !enforced {
        let enforce_l7 = specific.unwrap_or(flags) & policy_flags::L7_ENFORCE != 0;
        Ok(Allowed {
            flags,
            policy,
            enforce_l7,
        })
    } else {
        Err(Denied {
            reason: drop_reason::POLICY_DENIED,
            policy: 0,
        })
    }
}

#[inline(always)]
fn forward_key(pkt: &Packet, dir: u8, ep_id: u16, out: &mut CtKey) {
    *out = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir,
        ep_id,
    };
}

#[inline(always)]
fn reverse_key(pkt: &Packet, dir: u8, ep_id: u16, out: &mut CtKey) {
    let icmp = pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6;
    // ICMP echo: the identifier is the same in both directions.
    let (sport, dport) = if icmp {
        (pkt.sport, pkt.dport)
    } else {
        (pkt.dport, pkt.sport)
    };
    *out = CtKey {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport,
        dport,
        proto: pkt.proto,
        dir,
        ep_id,
    };
}

/// Copies a packet of an L7-visible connection to the runtime (perf buffer: the
/// kernel copies the packet bytes, so no length games with the verifier).
#[inline(always)]
fn copy_payload(ctx: &TcContext, ep: &EndpointInfo, dir: u8, pkt: &Packet, remote: u32) {
    // Empty segments matter only when they open or close a stream.
    if pkt.payload_len == 0 && pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return;
    }
    let len = if pkt.len < MAX_PAYLOAD_COPY {
        pkt.len
    } else {
        MAX_PAYLOAD_COPY
    };
    let header = PayloadEvent {
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        ifindex: ifindex(ctx),
        len,
        orig_len: pkt.len,
        local_identity: ep.identity,
        remote_identity: remote,
        ep_id: ep.ep_id,
        dir,
        pad: 0,
    };
    PAYLOAD.output(ctx, &header, len);
    if let Some(c) = COUNTERS.get_ptr_mut(COUNTER_PAYLOAD) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(pkt.payload_len);
        }
    }
}

#[inline(always)]
fn count(dir: u8, reason: u8, len: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(dir, reason)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len as u64;
    }
}

#[inline(always)]
fn drop(ctx: &TcContext, ep: &EndpointInfo, dir: u8, pkt: &Packet, remote: u32, reason: u8) -> i32 {
    drop_by(ctx, ep, dir, pkt, remote, Denied { reason, policy: 0 })
}

/// Drops a packet policy denied, naming the deciding entry.
#[inline(always)]
fn drop_by(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: u8,
    pkt: &Packet,
    remote: u32,
    denied: Denied,
) -> i32 {
    count(dir, denied.reason, pkt.len);
    emit(
        ctx,
        ep,
        dir,
        pkt,
        remote,
        event_kind::DROP,
        denied.reason,
        ct_status::NEW,
        0,
        denied.policy,
    );
    TC_DROP
}

#[inline(always)]
fn trace(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: u8,
    pkt: &Packet,
    remote: u32,
    status: u8,
    flags: u8,
) {
    emit(
        ctx,
        ep,
        dir,
        pkt,
        remote,
        event_kind::TRACE,
        drop_reason::NONE,
        status,
        flags,
        0,
    );
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: u8,
    pkt: &Packet,
    remote: u32,
    kind: u8,
    reason: u8,
    status: u8,
    policy_flags: u8,
    policy: u16,
) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        if let Some(c) = COUNTERS.get_ptr_mut(LOST_EVENTS) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { (*c).packets += 1 };
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at an exclusive reservation sized for a `FlowEvent`; every
    // field is written before submit. Written field by field to keep the record off
    // the 512-byte BPF stack.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_boot_ns();
        (*ev).saddr = pkt.saddr;
        (*ev).daddr = pkt.daddr;
        (*ev).sport = pkt.sport;
        (*ev).dport = pkt.dport;
        (*ev).ifindex = ifindex(ctx);
        (*ev).local_identity = ep.identity;
        (*ev).remote_identity = remote;
        (*ev).ep_id = ep.ep_id;
        (*ev).kind = kind;
        (*ev).reason = reason;
        (*ev).dir = dir;
        (*ev).proto = pkt.proto;
        (*ev).tcp_flags = pkt.tcp_flags;
        (*ev).family = pkt.family;
        (*ev).ct_status = status;
        (*ev).policy_flags = policy_flags;
        (*ev).policy = policy;
        (*ev).len = pkt.len;
    }
    // Wake the reader only once a batch has built up; it also drains on a short
    // timer. A wake-up per event costs more than the event at high connection rates.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
}

#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ParseError> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| ParseError::NotIp)?);
    *pkt = Packet {
        family: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        proto: 0,
        sport: 0,
        dport: 0,
        policy_port: 0,
        tcp_flags: 0,
        seq: 0,
        payload_len: 0,
        control: false,
        fragment: false,
        len: ctx.len(),
    };
    let l4_off = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx
                .load(ETH_HLEN)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            let ihl = ((vihl & 0x0F) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(ParseError::Invalid(drop_reason::INVALID_PACKET));
            }
            let frag: u16 = u16::from_be(
                ctx.load(ETH_HLEN + 6)
                    .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?,
            );
            pkt.fragment = frag & 0x1FFF != 0;
            pkt.proto = ctx
                .load(ETH_HLEN + 9)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            let s: [u8; 4] = ctx
                .load(ETH_HLEN + 12)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            let d: [u8; 4] = ctx
                .load(ETH_HLEN + 16)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            pkt.saddr = mapped(s);
            pkt.daddr = mapped(d);
            pkt.family = 4;
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            let mut next: u8 = ctx
                .load(ETH_HLEN + 6)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            pkt.saddr = ctx
                .load(ETH_HLEN + 8)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            pkt.daddr = ctx
                .load(ETH_HLEN + 24)
                .map_err(|_| ParseError::Invalid(drop_reason::INVALID_PACKET))?;
            pkt.family = 6;
            let mut off = ETH_HLEN + 40;
            // Walk a bounded chain of extension headers.
            let mut i = 0;
            while i < 4 {
                match next {
                    0 | 43 | 60 => {
                        let hdr: [u8; 2] = ctx.load(off).map_err(|_| {
                            ParseError::Invalid(drop_reason::INVALID_IPV6_EXTENSION_HEADER)
                        })?;
                        next = hdr[0];
                        off += (hdr[1] as usize + 1) * 8;
                    }
                    44 => {
                        let hdr: [u8; 4] = ctx.load(off).map_err(|_| {
                            ParseError::Invalid(drop_reason::INVALID_IPV6_EXTENSION_HEADER)
                        })?;
                        next = hdr[0];
                        let frag_off = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xFFF8;
                        pkt.fragment = frag_off != 0;
                        off += 8;
                    }
                    _ => break,
                }
                i += 1;
            }
            if matches!(next, 0 | 43 | 60 | 44) {
                return Err(ParseError::Invalid(
                    drop_reason::INVALID_IPV6_EXTENSION_HEADER,
                ));
            }
            pkt.proto = next;
            off
        }
        _ => return Err(ParseError::NotIp),
    };
    if pkt.fragment {
        return Ok(());
    }
    let bad = |_| ParseError::Invalid(drop_reason::CT_TRUNCATED_OR_INVALID_HEADER);
    match pkt.proto {
        IPPROTO_TCP => {
            let ports: [u8; 4] = ctx.load(l4_off).map_err(bad)?;
            pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
            pkt.tcp_flags = ctx.load(l4_off + 13).map_err(bad)?;
            pkt.seq = u32::from_be(ctx.load(l4_off + 4).map_err(bad)?);
            pkt.policy_port = pkt.dport;
            let doff: u8 = ctx.load(l4_off + 12).map_err(bad)?;
            let headers = (l4_off + usize::from(doff >> 4) * 4) as u32;
            pkt.payload_len = pkt.len.saturating_sub(headers);
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u8; 4] = ctx.load(l4_off).map_err(bad)?;
            pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
            pkt.policy_port = pkt.dport;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let hdr: [u8; 8] = ctx.load(l4_off).map_err(bad)?;
            let (ty, code) = (hdr[0], hdr[1]);
            let echo = if pkt.proto == IPPROTO_ICMP {
                ty == 8 || ty == 0
            } else {
                ty == 128 || ty == 129
            };
            if echo {
                // Keyed by the echo identifier; policy sees the type.
                pkt.sport = u16::from_be_bytes([hdr[4], hdr[5]]);
                pkt.dport = 0;
                // Requests and replies share one policy entry: the request's type.
                pkt.policy_port = if pkt.proto == IPPROTO_ICMP { 8 } else { 128 };
            } else {
                // Errors and neighbour discovery belong to other traffic.
                pkt.control = true;
                pkt.sport = ty as u16;
                pkt.dport = code as u16;
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
