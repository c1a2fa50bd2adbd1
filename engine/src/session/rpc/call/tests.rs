use super::*;

fn pkt(stream: u64, message: u64, kind: Kind, control: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_packet(&mut out, Id::new(stream, message), kind, control, data);
    out
}

fn events(call: &mut Call) -> Vec<CallEvent> {
    std::iter::from_fn(|| call.poll_event()).collect()
}

/// Runs bytes from one side into the other until neither has anything to send.
fn pump(a: &mut Call, b: &mut Call) {
    loop {
        let mut moved = false;
        if let Some(bytes) = a.poll_transmit() {
            b.handle_input(&bytes).unwrap();
            moved = true;
        }
        if let Some(bytes) = b.poll_transmit() {
            a.handle_input(&bytes).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn unary_call_follows_the_call_shape_table() {
    let mut client = Call::client("/svc/Unary");
    assert!(client.send_message(b"req"));
    client.close_send();
    assert_eq!(
        client.poll_transmit().unwrap(),
        [
            pkt(1, 1, Kind::Invoke, false, b"/svc/Unary"),
            pkt(1, 2, Kind::Message, false, b"req"),
            pkt(1, 3, Kind::CloseSend, false, b""),
        ]
        .concat()
    );

    let mut client = Call::client("/svc/Unary");
    client.send_message(b"req");
    client.close_send();
    let mut server = Call::server();
    pump(&mut client, &mut server);
    assert_eq!(
        events(&mut server),
        [
            CallEvent::Invoked {
                path: "/svc/Unary".into()
            },
            CallEvent::Message(b"req".to_vec()),
            CallEvent::RemoteDone,
        ]
    );
    server.send_message(b"resp");
    server.close_send();
    assert_eq!(
        server.poll_transmit().unwrap(),
        [
            pkt(1, 1, Kind::Message, false, b"resp"),
            pkt(1, 2, Kind::CloseSend, false, b""),
        ]
        .concat()
    );
}

#[test]
fn both_close_sends_finish_the_call_and_close_becomes_a_no_op() {
    let mut client = Call::client("/svc/M");
    let mut server = Call::server();
    client.close_send();
    pump(&mut client, &mut server);
    server.close_send();
    pump(&mut client, &mut server);
    assert!(client.is_finished() && server.is_finished());
    client.close();
    client.cancel();
    assert_eq!(client.poll_transmit(), None);
}

#[test]
fn close_before_the_servers_close_send_is_sent() {
    let mut client = Call::client("/svc/M");
    client.send_message(b"");
    client.close_send();
    client.poll_transmit();
    client
        .handle_input(&pkt(1, 1, Kind::Message, false, b"resp"))
        .unwrap();
    client.close();
    assert_eq!(
        client.poll_transmit().unwrap(),
        pkt(1, 4, Kind::Close, false, b"")
    );
    assert!(client.is_finished());
}

#[test]
fn cancel_carries_the_control_bit() {
    let mut client = Call::client("/svc/M");
    client.poll_transmit();
    client.cancel();
    assert_eq!(client.poll_transmit().unwrap(), [0x89, 1, 2, 0]);
    assert!(!client.send_message(b"late"));
}

#[test]
fn error_packet_ends_the_call_with_code_and_text() {
    let mut client = Call::client("/svc/M");
    client
        .handle_input(&pkt(
            1,
            1,
            Kind::Error,
            false,
            &codec::error_data(12, "nope"),
        ))
        .unwrap();
    assert_eq!(
        events(&mut client),
        [CallEvent::RemoteError {
            code: 12,
            text: "nope".into()
        }]
    );
    assert!(client.is_finished());
    assert!(!client.send_message(b"x"));
    // Whatever follows on the stream is dropped.
    client
        .handle_input(&pkt(1, 2, Kind::Message, false, b"y"))
        .unwrap();
    assert!(events(&mut client).is_empty());
}

#[test]
fn server_error_after_invoke_uses_the_invoked_stream_id() {
    let mut server = Call::server();
    server
        .handle_input(&pkt(1, 1, Kind::Invoke, false, b"/x"))
        .unwrap();
    server.send_error(0, "boom");
    assert_eq!(
        server.poll_transmit().unwrap(),
        pkt(1, 1, Kind::Error, false, &codec::error_data(0, "boom"))
    );
    // No close-send after an error.
    server.close_send();
    assert_eq!(server.poll_transmit(), None);
}

#[test]
fn unknown_kind_with_control_bit_is_ignored() {
    let mut client = Call::client("/svc/M");
    client
        .handle_input(&pkt(1, 1, Kind::Unknown(9), true, b"future"))
        .unwrap();
    client
        .handle_input(&pkt(1, 2, Kind::Message, false, b"m"))
        .unwrap();
    assert_eq!(events(&mut client), [CallEvent::Message(b"m".to_vec())]);
}

#[test]
fn unknown_kind_without_control_bit_is_an_error() {
    let mut client = Call::client("/svc/M");
    let err = client
        .handle_input(&pkt(1, 1, Kind::Unknown(9), false, b""))
        .unwrap_err();
    assert_eq!(
        err,
        CallError::UnexpectedKind {
            kind: Kind::Unknown(9),
            id: Id::new(1, 1)
        }
    );
    assert!(client.is_finished());
}

#[test]
fn unknown_kind_before_invoke_follows_the_same_rule() {
    let mut server = Call::server();
    server
        .handle_input(&pkt(1, 1, Kind::Unknown(20), true, b""))
        .unwrap();
    let err = server
        .handle_input(&pkt(1, 2, Kind::Unknown(20), false, b""))
        .unwrap_err();
    assert!(matches!(err, CallError::BeforeInvoke { .. }), "{err}");
}

#[test]
fn invoke_metadata_before_invoke_is_accepted() {
    let mut server = Call::server();
    let mut wire = pkt(1, 1, Kind::InvokeMetadata, false, b"\x0a\x00");
    wire.extend(pkt(1, 2, Kind::Invoke, false, b"/p"));
    server.handle_input(&wire).unwrap();
    assert_eq!(
        events(&mut server),
        [CallEvent::Invoked { path: "/p".into() }]
    );
}

#[test]
fn message_before_invoke_is_an_error() {
    let mut server = Call::server();
    let err = server
        .handle_input(&pkt(1, 1, Kind::Message, false, b""))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "message packet (stream 1, message 1) arrived before any invoke"
    );
}

#[test]
fn invoke_on_a_running_stream_is_an_error() {
    let mut server = Call::server();
    let mut wire = pkt(1, 1, Kind::Invoke, false, b"/p");
    wire.extend(pkt(1, 2, Kind::Invoke, false, b"/q"));
    let err = server.handle_input(&wire).unwrap_err();
    assert_eq!(err, CallError::InvokeOnExistingStream { id: Id::new(1, 2) });
}

#[test]
fn second_call_on_one_transport_stream_is_refused() {
    let mut server = Call::server();
    let mut wire = pkt(1, 1, Kind::Invoke, false, b"/p");
    wire.extend(pkt(2, 1, Kind::Invoke, false, b"/q"));
    let err = server.handle_input(&wire).unwrap_err();
    assert_eq!(err, CallError::SecondCall { id: Id::new(2, 1) });
}

#[test]
fn packets_for_an_older_stream_are_ignored() {
    let mut server = Call::server();
    let mut wire = pkt(2, 1, Kind::Invoke, false, b"/p");
    server.handle_input(&wire).unwrap();
    wire = pkt(2, 2, Kind::Message, false, b"m");
    server.handle_input(&wire).unwrap();
    assert_eq!(events(&mut server).len(), 2);
}

#[test]
fn malformed_input_terminates_the_call() {
    let mut client = Call::client("/svc/M");
    let mut bad = vec![0x05];
    bad.extend([0xff; 11]);
    let err = client.handle_input(&bad).unwrap_err();
    assert!(matches!(err, CallError::Codec(_)), "{err}");
    assert!(client.is_finished());
    assert!(!client.send_message(b"x"));
}

#[test]
fn eof_before_close_send_is_truncation() {
    let mut client = Call::client("/svc/M");
    assert_eq!(client.handle_eof(), Err(CallError::Truncated));

    let mut client = Call::client("/svc/M");
    client
        .handle_input(&pkt(1, 1, Kind::CloseSend, false, b""))
        .unwrap();
    assert_eq!(client.handle_eof(), Ok(()));
}

#[test]
fn messages_after_close_send_are_dropped() {
    let mut client = Call::client("/svc/M");
    let mut wire = pkt(1, 1, Kind::CloseSend, false, b"");
    wire.extend(pkt(1, 2, Kind::Message, false, b"late"));
    client.handle_input(&wire).unwrap();
    assert_eq!(events(&mut client), [CallEvent::RemoteDone]);
}

#[test]
fn remote_cancel_and_close_are_terminal() {
    for (kind, control, event) in [
        (Kind::Cancel, true, CallEvent::Canceled),
        (Kind::Close, false, CallEvent::Closed),
    ] {
        let mut server = Call::server();
        let mut wire = pkt(1, 1, Kind::Invoke, false, b"/p");
        wire.extend(pkt(1, 2, kind, control, b""));
        server.handle_input(&wire).unwrap();
        let got = events(&mut server);
        assert_eq!(got.last(), Some(&event));
        assert!(server.is_finished());
        assert!(!server.send_message(b"x"));
    }
}

#[test]
fn server_answers_bad_input_with_a_protocol_error_packet() {
    let mut server = Call::server();
    server
        .handle_input(&pkt(1, 1, Kind::Invoke, false, b"/p"))
        .unwrap();
    let err = server
        .handle_input(&pkt(1, 2, Kind::Unknown(30), false, b""))
        .unwrap_err();
    let out = server.poll_transmit().unwrap();
    let mut r = codec::PacketReader::new();
    r.push(&out);
    let p = r.next_packet().unwrap().unwrap();
    assert_eq!(p.kind, Kind::Error);
    assert_eq!(
        codec::parse_error_data(&p.data),
        (0, format!("protocol error: {err}"))
    );
}
