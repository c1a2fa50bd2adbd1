//! Writes `seeds/drpc_packets/`: valid and broken dRPC streams, each behind a schedule byte.

#[allow(dead_code)]
#[path = "../../src/session/rpc/codec.rs"]
mod codec;

use codec::{Frame, Id, Kind, error_data, put_frame, put_packet, put_packet_split};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/drpc_packets");
    std::fs::create_dir_all(&dir)?;
    let path = b"/coder.tailnet.v2.Tailnet/RefreshResumeToken";
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    let mut w = Vec::new();
    put_packet(&mut w, Id::new(1, 1), Kind::Invoke, false, path);
    put_packet(&mut w, Id::new(1, 2), Kind::Message, false, b"");
    put_packet(&mut w, Id::new(1, 3), Kind::CloseSend, false, b"");
    seeds.push(("refresh_client", w));

    let mut w = Vec::new();
    put_packet(
        &mut w,
        Id::new(1, 1),
        Kind::Message,
        false,
        b"\x0a\x05token",
    );
    put_packet(&mut w, Id::new(1, 2), Kind::CloseSend, false, b"");
    seeds.push(("refresh_server", w));

    let mut w = Vec::new();
    put_packet(
        &mut w,
        Id::new(1, 1),
        Kind::Error,
        false,
        &error_data(12, "Unimplemented"),
    );
    seeds.push(("error_unimplemented", w));

    let mut w = Vec::new();
    put_packet(
        &mut w,
        Id::new(1, 1),
        Kind::InvokeMetadata,
        false,
        b"\x0a\x02\x0a\x00",
    );
    put_packet(
        &mut w,
        Id::new(1, 2),
        Kind::Invoke,
        false,
        b"/coder.tailnet.v2.Tailnet/Coordinate",
    );
    put_packet_split(
        &mut w,
        Id::new(1, 3),
        Kind::Message,
        false,
        &[0x42; 700],
        100,
    );
    put_packet(&mut w, Id::new(1, 4), Kind::Unknown(40), true, b"future");
    put_packet(&mut w, Id::new(1, 5), Kind::Cancel, true, b"");
    seeds.push(("coordinate_split_cancel", w));

    let mut w = Vec::new();
    put_frame(
        &mut w,
        &Frame {
            id: Id::new(1, 1),
            kind: Kind::Message,
            done: false,
            control: false,
            data: b"partial",
        },
    );
    put_packet(&mut w, Id::new(2, 1), Kind::Invoke, false, b"/x");
    put_packet(&mut w, Id::new(2, 2), Kind::Close, false, b"");
    seeds.push(("interrupted_then_second_stream", w));

    let mut w = vec![0x05];
    w.extend([0x80; 9]);
    w.push(0x02);
    seeds.push(("varint_overflow", w));

    let mut w = Vec::new();
    put_packet(&mut w, Id::new(1, 2), Kind::Message, false, b"a");
    put_packet(&mut w, Id::new(1, 1), Kind::Message, false, b"b");
    seeds.push(("ids_backwards", w));

    for (name, stream) in seeds {
        for schedule in [0x07u8, 0x00, 0x2b] {
            let mut input = vec![schedule];
            input.extend_from_slice(&stream);
            std::fs::write(dir.join(format!("{name}_{schedule:02x}")), input)?;
        }
    }
    Ok(())
}
