//! Writes the seed inputs under `fuzz/seeds/<target>/` (committed): one valid example of
//! each message kind, so the fuzzers start from inputs that get past the first checks.
//! Run from the repository root after a format change:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anonnet_crypto::{sign_descriptor, IdentityKey};
use anonnet_wire::descriptor::{FLAG_EXIT, FLAG_GUARD};
use anonnet_wire::{
    Create, CreateHybrid, Created, CreatedHybrid, Destroy, DestroyReason, EndReason, PortRange,
    RelayCell, RelayDescriptor, RelayMsg, ResolvedAnswer, StreamId, Target, CELL_LEN,
    HYBRID_HELLO_LEN, HYBRID_REPLY_LEN,
};
use bytes::Bytes;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/seeds").join(target);
    fs::create_dir_all(&dir).expect("create seed dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn cells() {
    // Every leg carries CELL_LEN-byte cells (protocol version 2, §4.1).
    let create = Create {
        cell_len: CELL_LEN as u16,
        node_id: [1; 32],
        onion_key: [2; 32],
        client_pk: [3; 32],
    };
    write(
        "cells",
        &format!("create-{CELL_LEN}"),
        &create.encode().unwrap(),
    );
    // The two-cell type-2 (hybrid) CREATE and CREATED (§4.2).
    let hybrid = CreateHybrid {
        hello: vec![6; HYBRID_HELLO_LEN],
    };
    write("cells", "create-hybrid", &hybrid.encode().unwrap());
    let hybrid = CreatedHybrid {
        reply: vec![7; HYBRID_REPLY_LEN],
    };
    write("cells", "created-hybrid", &hybrid.encode().unwrap());
    let created = Created {
        server_pk: [4; 32],
        auth: [5; 32],
    };
    write("cells", "created", &created.encode(CELL_LEN).unwrap());
    let destroy = Destroy {
        reason: DestroyReason::Protocol,
    };
    write("cells", "destroy", &destroy.encode(CELL_LEN).unwrap());
}

fn relay_cells() {
    let inner = CELL_LEN - 26;
    let s = StreamId(7);
    let c = StreamId::CIRCUIT;
    let msgs = [
        (
            "begin-host",
            s,
            RelayMsg::Begin {
                target: Target::Host("example.com".into()),
                port: 443,
            },
        ),
        (
            "begin-v4",
            s,
            RelayMsg::Begin {
                target: Target::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                port: 80,
            },
        ),
        (
            "begin-v6",
            s,
            RelayMsg::Begin {
                target: Target::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                port: 8080,
            },
        ),
        (
            "data",
            s,
            RelayMsg::Data(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")),
        ),
        (
            "resolve-host",
            s,
            RelayMsg::Resolve(Target::Host("localhost".into())),
        ),
        (
            "resolve-ptr",
            s,
            RelayMsg::Resolve(Target::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        ),
        (
            "resolved-addresses",
            s,
            RelayMsg::Resolved(vec![
                ResolvedAnswer::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                ResolvedAnswer::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ]),
        ),
        (
            "resolved-name",
            s,
            RelayMsg::Resolved(vec![ResolvedAnswer::Host("localhost".into())]),
        ),
        (
            "resolved-error",
            s,
            RelayMsg::Resolved(vec![ResolvedAnswer::TransientError]),
        ),
        ("end", s, RelayMsg::End(EndReason::Done)),
        ("connected", s, RelayMsg::Connected),
        (
            "extend-v4",
            c,
            RelayMsg::Extend {
                node_id: [1; 32],
                addr: "192.0.2.1:5000".parse().unwrap(),
                onion_key: [2; 32],
                client_pk: [3; 32],
            },
        ),
        (
            "extend-v6",
            c,
            RelayMsg::Extend {
                node_id: [1; 32],
                addr: "[2001:db8::1]:5000".parse().unwrap(),
                onion_key: [2; 32],
                client_pk: [3; 32],
            },
        ),
        (
            "extended",
            c,
            RelayMsg::Extended {
                server_pk: [4; 32],
                auth: [5; 32],
            },
        ),
        (
            "truncated",
            c,
            RelayMsg::Truncated(DestroyReason::ConnectFailed),
        ),
        ("drop", c, RelayMsg::Drop),
        ("sendme-circuit", c, RelayMsg::Sendme(Some([9; 16]))),
        ("sendme-stream", s, RelayMsg::Sendme(None)),
        (
            "name-register",
            c,
            RelayMsg::NameRegister {
                record: Bytes::from(signed_dark_record().encode().unwrap()),
            },
        ),
        (
            "name-receipts",
            c,
            RelayMsg::NameReceipts {
                asked: 3,
                refused: 1,
                receipts: signed_dark_record().receipts,
            },
        ),
    ];
    for (name, stream_id, msg) in msgs {
        let mut area = vec![0u8; inner];
        RelayCell::new(stream_id, msg)
            .encode_into(&mut area)
            .unwrap();
        write("relay_cell", name, &area);
        // Short areas too: the fuzzer's default length limit is 4 KiB but smaller is faster.
        let used = area.iter().rposition(|&b| b != 0).map_or(5, |i| i + 1);
        write("relay_cell", &format!("{name}-short"), &area[..used.max(5)]);
    }
}

fn descriptors() {
    let identity = IdentityKey::from_seed(&[0x42; 32]);
    let desc = RelayDescriptor {
        identity: identity.public(),
        onion_key: [2; 32],
        handshakes: anonnet_wire::HandshakeSet::ALL,
        addresses: vec![
            SocketAddr::from(([127, 0, 0, 1], 5000)),
            "[::1]:5001".parse().unwrap(),
        ],
        flags: FLAG_EXIT | FLAG_GUARD,
        exit_ports: vec![
            PortRange { lo: 80, hi: 80 },
            PortRange { lo: 443, hi: 8080 },
        ],
        bandwidth: 1_000_000,
        published: 1_700_000_000,
        expires: 1_700_086_400,
    };
    let signed = sign_descriptor(&identity, &desc).unwrap();
    write("descriptor", "signed", &signed.encode().unwrap());
    write(
        "descriptor",
        "signed-base64",
        signed.to_base64().unwrap().as_bytes(),
    );
    write("descriptor", "body", &signed.body);
}

fn http() {
    let reqs: [(&str, &str); 8] = [
        ("get-absolute", "GET http://example.com/index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nProxy-Connection: keep-alive\r\n\r\n"),
        ("get-auth", "GET http://example.com:8080/ HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\nConnection: keep-alive, X-Trace\r\nX-Trace: 1\r\nTE: trailers\r\n\r\n"),
        ("connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        ("connect-v6", "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\nProxy-Authorization: basic YTo=\r\n\r\n"),
        ("post-body", "POST http://10.0.0.1/form HTTP/1.1\r\nHost: 10.0.0.1\r\nContent-Length: 5\r\n\r\nhello"),
        ("chunked", "PUT http://[::1]:81/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("origin-form", "GET /only/a/path HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("pipelined", "GET http://a/ HTTP/1.1\r\n\r\nGET https://b/ HTTP/1.1\r\n\r\nGET ftp://c/ HTTP/1.0\r\n\r\n"),
    ];
    for (name, text) in reqs {
        write("http_request", name, text.as_bytes());
    }
}

fn control() {
    let docs: [(&str, &str); 10] = [
        ("status", r#"{"enabled":true,"bootstrap":{"percent":100,"phase":"ready"},"relays":5,"circuits":[{"id":7,"path":["aa","bb","cc"],"age_secs":12.5,"build_ms":3.25,"streams":1,"state":"in use"}],"streams":1,"counters":{"circuits_built":4,"streams_opened":2,"bytes_received":1024}}"#),
        ("proxy", r#"{"enabled":false}"#),
        ("publish", r#"{"target":"127.0.0.1:8080","port":80}"#),
        ("unpublish", r#"{"address":"abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvw.anon"}"#),
        ("services", r#"[{"address":"x.anon","port":80,"target":"127.0.0.1:8080","published":true}]"#),
        ("error", r#"{"error":"unauthorized"}"#),
        ("events", "{\"event\":\"bootstrap\",\"percent\":40,\"phase\":\"building first circuit\"}\n{\"event\":\"circuit_built\",\"id\":3,\"path\":[\"ab\"],\"build_ms\":2.5}\n{\"event\":\"circuit_closed\",\"id\":3}\n{\"event\":\"proxy_enabled\",\"enabled\":true}\n{\"event\":\"new_identity\"}\n{\"event\":\"error\",\"message\":\"x\"}\n{\"event\":\"lagged\",\"missed\":9}\n{\"event\":\"service_published\",\"address\":\"x.anon\"}"),
        ("ack", r#"{"ok":true}"#),
        ("cookie", "3f1c00000000000000000000000000000000000000000000000000000000009a\n"),
        ("bearer", "Bearer abababababababababababababababababababababababababababababababab"),
    ];
    for (name, text) in docs {
        write("control_json", name, text.as_bytes());
    }
}

fn socks() {
    let seeds: [(&str, &[u8]); 6] = [
        // no auth; CONNECT example.com:443
        ("noauth-domain", b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x01\xbb"),
        // no auth; CONNECT 10.0.0.1:80
        ("noauth-v4", b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50"),
        // no auth; CONNECT [::1]:8080
        ("noauth-v6", b"\x05\x01\x00\x05\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x1f\x90"),
        // username/password "user"/"pass"; CONNECT example.com:443
        ("userpass", b"\x05\x02\x00\x02\x01\x04user\x04pass\x05\x01\x00\x03\x0bexample.com\x01\xbb"),
        // BIND and UDP ASSOCIATE (refused with CommandNotSupported)
        ("bind", b"\x05\x01\x00\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"),
        ("udp", b"\x05\x01\x00\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"),
    ];
    for (name, bytes) in seeds {
        write("socks", name, bytes);
    }
}

fn dht() {
    use anonnet_wire::dht::{frame_request, frame_response, DhtMessage, Record, StoreStatus};
    let identity = IdentityKey::from_seed(&[0x43; 32]);
    let desc = RelayDescriptor {
        identity: identity.public(),
        onion_key: [6; 32],
        handshakes: anonnet_wire::HandshakeSet::ALL,
        addresses: vec![SocketAddr::from(([192, 0, 2, 7], 5000))],
        flags: FLAG_GUARD,
        exit_ports: vec![],
        bandwidth: 500_000,
        published: 1_699_999_000,
        expires: 1_700_086_400,
    };
    let signed = sign_descriptor(&identity, &desc).unwrap();
    let record = Record::relay_descriptor(&signed).unwrap();
    let msgs = [
        ("ping", DhtMessage::Ping { txid: 1 }),
        ("pong", DhtMessage::Pong { txid: 1 }),
        (
            "find-node",
            DhtMessage::FindNode {
                txid: 2,
                target: [0xab; 32],
            },
        ),
        (
            "nodes",
            DhtMessage::Nodes {
                txid: 2,
                nodes: vec![signed.clone(), signed.clone()],
            },
        ),
        (
            "find-value",
            DhtMessage::FindValue {
                txid: 3,
                key: [7; 32],
            },
        ),
        (
            "value",
            DhtMessage::Value {
                txid: 3,
                records: vec![record.clone()],
                nodes: vec![signed.clone()],
            },
        ),
        (
            "store",
            DhtMessage::Store {
                txid: 4,
                key: [7; 32],
                record,
            },
        ),
        (
            "stored",
            DhtMessage::Stored {
                txid: 4,
                status: StoreStatus::Rejected(2),
            },
        ),
        (
            "announce",
            DhtMessage::Announce {
                txid: 5,
                descriptor: signed,
            },
        ),
    ];
    for (name, msg) in msgs {
        write("dht", name, &msg.encode().unwrap());
        let framed = if msg.is_request() {
            frame_request(&msg)
        } else {
            frame_response(&msg)
        };
        write("dht", &format!("{name}-framed"), &framed.unwrap());
    }
}

fn hidden_services() {
    use anonnet_crypto::dark::{make_dark_record, DarkName};
    use anonnet_crypto::hs::{
        seal_descriptor_with_salt, seal_introduce_with_secret, IntroKey, ServiceKey,
    };
    use anonnet_wire::hs::{
        HsDescriptorBody, IntroPoint, IntroducePlaintext, PowParams, RelayLink,
    };

    let service = ServiceKey::from_seed(&[0x61; 32]);
    let intro_key = IntroKey::from_secret(&[0x55; 32]);
    let link = |n: u8, addr: &str| RelayLink {
        node_id: [n; 32],
        onion_key: [n + 1; 32],
        addr: addr.parse().unwrap(),
    };
    let body = HsDescriptorBody {
        pow: Some(PowParams {
            seed: [0x5e; 32],
            suggested_effort: 8,
            seed_expires: 1_900_000_000,
        }),
        intro_points: vec![
            IntroPoint {
                relay: link(1, "127.0.0.1:7001"),
                auth_key: [0x88; 32],
                enc_key: intro_key.public(),
            },
            IntroPoint {
                relay: link(3, "[2001:db8::3]:7003"),
                auth_key: [0x89; 32],
                enc_key: IntroKey::from_secret(&[0x56; 32]).public(),
            },
        ],
    };
    // Valid until 2030; the targets take `now` from the input's last bytes.
    let desc =
        seal_descriptor_with_salt(&service, 20_000, 1, 1_900_000_000, &[0x5a; 16], &body).unwrap();
    write("hs_descriptor", "descriptor", &desc.encode().unwrap());
    write("hs_descriptor", "body", &body.encode().unwrap());

    let plaintext = IntroducePlaintext {
        pow: Some(anonnet_crypto::hs_pow::solve(
            service.address().public(),
            &[0x5e; 32],
            8,
            [0; 16],
        )),
        cookie: [0xc0; 20],
        rendezvous: link(5, "127.0.0.1:7002"),
        client_pk: [0x33; 32],
    }
    .encode()
    .unwrap();
    let sealed =
        seal_introduce_with_secret(&[0x66; 32], &intro_key.public(), &[0x88; 32], &plaintext)
            .unwrap();
    write("hs_introduce", "sealed", &sealed);
    write("hs_introduce", "plaintext", &plaintext);

    let name = DarkName::parse("example").unwrap();
    let owner = IdentityKey::from_seed(&[0x41; 32]);
    let record = make_dark_record(
        &owner,
        &name,
        &service.address(),
        1_800_000_000,
        1_800_086_400,
        8,
    );
    write("dark_record", "record", &record.encode().unwrap());
    write(
        "dark_record",
        "record-with-receipts",
        &signed_dark_record().encode().unwrap(),
    );

    let host = service.address().to_host();
    write("anon_address", "address", host.as_bytes());
    write(
        "anon_address",
        "subdomain",
        format!("www.{}.", host.to_uppercase()).as_bytes(),
    );
    write("anon_address", "dark", b"www.Example.dark");
    // A ‖ checksum ‖ version as raw bytes (the target base32-encodes the first 35).
    let raw = [&service.address().public()[..], &[0, 0, 1]].concat();
    write("anon_address", "raw-key", &raw);
}

/// A `.dark` record for "example" with receipts of the fuzz target's two name authorities
/// (seeds [0x51; 32] and [0x52; 32], network id [0x33; 32]).
fn signed_dark_record() -> anonnet_wire::hs::DarkRecord {
    use anonnet_crypto::dark::{make_dark_record, sign_receipt, DarkName};
    use anonnet_crypto::hs::ServiceKey;

    let name = DarkName::parse("example").unwrap();
    let owner = IdentityKey::from_seed(&[0x41; 32]);
    let service = ServiceKey::from_seed(&[0x61; 32]);
    let mut record = make_dark_record(
        &owner,
        &name,
        &service.address(),
        1_800_000_000,
        1_800_086_400,
        8,
    );
    for seed in [0x51, 0x52] {
        let authority = IdentityKey::from_seed(&[seed; 32]);
        record.receipts.push(sign_receipt(
            &authority,
            &[0x33; 32],
            name.as_str(),
            &owner.public(),
            1_802_592_000,
        ));
    }
    record
}

fn directory() {
    use anonnet_dir::msg::UploadStatus;
    use anonnet_dir::network::AuthorityEntry;
    use anonnet_dir::{
        Consensus, DirMessage, Network, RelayEntry, RelayFlags, SignedConsensus, Vote,
    };

    // The network the `dir_documents` and `dir_message` targets verify against: three
    // authorities with seeds [1; 32], [2; 32], [3; 32], named "fuzz".
    let keys = [1u8, 2, 3].map(|i| IdentityKey::from_seed(&[i; 32]));
    let network = Network::new(
        "fuzz".into(),
        keys.iter()
            .enumerate()
            .map(|(i, k)| AuthorityEntry {
                name: format!("auth{}", i + 1),
                identity: k.public(),
                address: SocketAddr::from(([127, 0, 0, 1], 7100 + i as u16)),
            })
            .collect(),
    )
    .unwrap();
    let running = RelayFlags(RelayFlags::RUNNING.0 | RelayFlags::VALID.0);
    let mut relays = vec![
        // IPv4 guard, no exit.
        RelayEntry {
            identity: [0x11; 32],
            onion_key: [0x12; 32],
            handshakes: anonnet_wire::HandshakeSet::NTOR,
            address: SocketAddr::from(([192, 0, 2, 1], 5000)),
            flags: RelayFlags(running.0 | RelayFlags::STABLE.0 | RelayFlags::GUARD.0),
            weight: 2_000_000,
            exit_ports: vec![],
        },
        // IPv4 exit with two port ranges, every flag.
        RelayEntry {
            identity: [0x21; 32],
            onion_key: [0x22; 32],
            handshakes: anonnet_wire::HandshakeSet::ALL,
            address: SocketAddr::from(([192, 0, 2, 2], 5001)),
            flags: RelayFlags::ALL,
            weight: 750_000,
            exit_ports: vec![
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 443, hi: 8080 },
            ],
        },
        // IPv6 exit to every port.
        RelayEntry {
            identity: [0x31; 32],
            onion_key: [0x32; 32],
            handshakes: anonnet_wire::HandshakeSet::ALL,
            address: "[2001:db8::3]:5002".parse().unwrap(),
            flags: RelayFlags(running.0 | RelayFlags::EXIT.0 | RelayFlags::HSDIR.0),
            weight: 100_000,
            exit_ports: vec![PortRange::ALL],
        },
    ];
    relays.sort_by_key(|e| e.identity);
    // Valid 1_699_999_000..1_700_010_000; the targets check at 1_700_000_000.
    let (valid_after, fresh_until, valid_until) = (1_699_999_000, 1_700_002_600, 1_700_010_000);
    let consensus = Consensus {
        network_id: network.id(),
        valid_after,
        fresh_until,
        valid_until,
        srv_current: [0x5c; 32],
        srv_previous: [0x5b; 32],
        hs_srv_current: [0x5c; 32],
        hs_srv_previous: [0x5d; 32],
        commits: keys.iter().map(|k| (k.public(), [0xc0; 32])).collect(),
        relays: relays.clone(),
    };
    let body = consensus.encode_body().unwrap();
    // Signed by two of the three authorities: the majority.
    let signed = SignedConsensus {
        signatures: keys[..2]
            .iter()
            .map(|k| Consensus::sign_body(&body, k))
            .collect(),
        body: body.clone(),
    };
    assert_eq!(signed.verify(&network, 1_700_000_000), Ok(consensus));
    write("dir_documents", "consensus", &signed.encode());
    write("dir_documents", "consensus-body", &body);

    let vote = Vote {
        network_id: network.id(),
        authority: keys[0].public(),
        valid_after,
        fresh_until,
        valid_until,
        commit: [0xc1; 32],
        reveal: Some([0xd1; 32]),
        relays,
    };
    let signed_vote = vote.sign(&keys[0]).unwrap();
    assert_eq!(signed_vote.verify(&network), Ok(vote));
    write("dir_documents", "vote", &signed_vote.encode());
    write("dir_documents", "vote-body", &signed_vote.body);

    let identity = IdentityKey::from_seed(&[0x44; 32]);
    let desc = RelayDescriptor {
        identity: identity.public(),
        onion_key: [8; 32],
        handshakes: anonnet_wire::HandshakeSet::ALL,
        addresses: vec![SocketAddr::from(([192, 0, 2, 9], 5000))],
        flags: FLAG_EXIT,
        exit_ports: vec![PortRange { lo: 443, hi: 443 }],
        bandwidth: 250_000,
        published: 1_699_999_000,
        expires: 1_700_086_400,
    };
    let upload = sign_descriptor(&identity, &desc).unwrap();
    let msgs = [
        ("upload", DirMessage::Upload(upload)),
        (
            "uploaded",
            DirMessage::Uploaded {
                status: UploadStatus::Reachable,
                reason: String::new(),
            },
        ),
        (
            "uploaded-rejected",
            DirMessage::Uploaded {
                status: UploadStatus::Rejected,
                reason: "descriptor expired".into(),
            },
        ),
        ("get-consensus", DirMessage::GetConsensus),
        ("consensus", DirMessage::Consensus(Some(signed))),
        ("consensus-none", DirMessage::Consensus(None)),
        ("post-vote", DirMessage::PostVote(signed_vote.clone())),
        ("ok", DirMessage::Ok),
        ("get-vote", DirMessage::GetVote(valid_after)),
        ("vote", DirMessage::Vote(Some(signed_vote))),
        ("vote-none", DirMessage::Vote(None)),
        (
            "post-signature",
            DirMessage::PostSignature {
                digest: anonnet_dir::document::digest(&body),
                signature: Consensus::sign_body(&body, &keys[2]),
            },
        ),
        (
            "refused",
            DirMessage::Refused("not a directory authority".into()),
        ),
        (
            "register-name",
            DirMessage::RegisterName(signed_dark_record().encode().unwrap()),
        ),
        (
            "name-receipt",
            DirMessage::NameReceipt(signed_dark_record().receipts[0]),
        ),
    ];
    for (name, msg) in msgs {
        write("dir_message", name, &msg.encode().unwrap());
    }
}

/// SOCKS4 (an IP) and SOCKS4a (a host name) `CONNECT`, and a SOCKS4 `BIND`
/// (docs/protocol.md §9.3).
fn socks4() {
    write(
        "socks4",
        "connect-ip",
        b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00",
    );
    write(
        "socks4",
        "connect-host",
        b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.anon\x00GET",
    );
    write("socks4", "bind", b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00");
}

fn main() {
    socks4();
    dht();
    cells();
    relay_cells();
    descriptors();
    http();
    control();
    socks();
    hidden_services();
    directory();
    println!("seeds written under fuzz/seeds/");
}
