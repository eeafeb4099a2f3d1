use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX_FRAME: usize = 1 << 20;
const MAX_MESSAGE: usize = 4 << 20;

fn decoder() -> MessageDecoder {
    MessageDecoder::new(MAX_FRAME, MAX_MESSAGE)
}

/// Owned copy of a decoded message, so tests can collect results across calls.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Message<'_>> for Owned {
    fn from(message: Message<'_>) -> Self {
        match message {
            Message::Text(text) => Owned::Text(String::from_utf8(text.to_vec()).unwrap()),
            Message::Binary(data) => Owned::Binary(data.to_vec()),
            Message::Ping(data) => Owned::Ping(data.to_vec()),
            Message::Pong(data) => Owned::Pong(data.to_vec()),
            Message::Close(close) => Owned::Close(close.map(|c| (c.code, c.reason.to_owned()))),
        }
    }
}

/// The gateway read loop: decode everything decodable, return messages and
/// the number of bytes consumed.
fn decode_all(decoder: &mut MessageDecoder, buf: &mut [u8]) -> Result<(Vec<Owned>, usize), ProtocolError> {
    let mut pos = 0;
    let mut messages = Vec::new();
    loop {
        match decoder.decode(&mut buf[pos..])? {
            None => break,
            Some(decoded) => {
                assert!(decoded.consumed > 0);
                pos += decoded.consumed;
                if let Some(message) = decoded.message {
                    messages.push(message.into());
                }
            }
        }
    }
    Ok((messages, pos))
}

fn decode_one(buf: &mut [u8]) -> Result<Option<Owned>, ProtocolError> {
    let mut decoder = decoder();
    let len = buf.len();
    let decoded = decoder.decode(buf)?.expect("complete frame");
    assert_eq!(decoded.consumed, len);
    Ok(decoded.message.map(Owned::from))
}

fn payload_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn raw_frame(first: u8, second: u8, rest: &[u8]) -> Vec<u8> {
    let mut frame = vec![first, second];
    frame.extend_from_slice(rest);
    frame
}

// ---- decode_header ----

#[test]
fn header_7bit_length() {
    let frame = client_frame(OpCode::Text, true, b"hi", KEY);
    let header = decode_header(&frame, Role::Server, MAX_FRAME).unwrap().unwrap();
    assert_eq!(header, FrameHeader { fin: true, opcode: OpCode::Text, mask: Some(KEY), payload_len: 2, header_len: 6 });
}

#[test]
fn header_16bit_length() {
    let frame = client_frame(OpCode::Binary, false, &payload_of(300), KEY);
    assert_eq!(&frame[1..4], &[0x80 | 126, 0x01, 0x2c]);
    let header = decode_header(&frame, Role::Server, MAX_FRAME).unwrap().unwrap();
    assert_eq!(
        header,
        FrameHeader { fin: false, opcode: OpCode::Binary, mask: Some(KEY), payload_len: 300, header_len: 8 }
    );
}

#[test]
fn header_64bit_length() {
    let frame = client_frame(OpCode::Binary, true, &payload_of(70_000), KEY);
    assert_eq!(frame[1], 0x80 | 127);
    let header = decode_header(&frame, Role::Server, MAX_FRAME).unwrap().unwrap();
    assert_eq!(header.payload_len, 70_000);
    assert_eq!(header.header_len, 14);
    assert_eq!(header.mask, Some(KEY));
}

#[test]
fn partial_header_needs_more() {
    for payload_len in [0, 5, 300, 70_000] {
        let frame = client_frame(OpCode::Binary, true, &payload_of(payload_len), KEY);
        let header_len = decode_header(&frame, Role::Server, MAX_FRAME).unwrap().unwrap().header_len;
        for cut in 0..header_len {
            assert_eq!(decode_header(&frame[..cut], Role::Server, MAX_FRAME), Ok(None), "cut {cut}");
        }
    }
}

#[test]
fn partial_frame_is_untouched() {
    for payload_len in [0, 1, 125, 126, 1000] {
        let frame = client_frame(OpCode::Text, true, &vec![b'x'; payload_len], KEY);
        for cut in 0..frame.len() {
            let mut buf = frame[..cut].to_vec();
            let mut decoder = decoder();
            assert_eq!(decoder.decode(&mut buf), Ok(None), "len {payload_len} cut {cut}");
            assert_eq!(buf, &frame[..cut], "partial frame was modified");
        }
    }
}

#[test]
fn unmasked_frame_rejected_by_server() {
    let frame = server_text(b"hello");
    assert_eq!(decode_header(&frame, Role::Server, MAX_FRAME), Err(ProtocolError::UnmaskedFrame));
    let mut buf = frame.to_vec();
    let err = decoder().decode(&mut buf).unwrap_err();
    assert_eq!(err, ProtocolError::UnmaskedFrame);
    assert_eq!(err.close_code(), close_code::PROTOCOL);
}

#[test]
fn masked_frame_rejected_by_client() {
    let frame = client_frame(OpCode::Text, true, b"hello", KEY);
    assert_eq!(decode_header(&frame, Role::Client, MAX_FRAME), Err(ProtocolError::MaskedFrame));
}

#[test]
fn rsv_bits_rejected() {
    for rsv in [0x40, 0x20, 0x10] {
        let frame = raw_frame(0x80 | rsv | 0x1, 0x80, &KEY);
        assert_eq!(decode_header(&frame, Role::Server, MAX_FRAME), Err(ProtocolError::ReservedBits));
        // Reported from the first byte alone.
        assert_eq!(decode_header(&frame[..1], Role::Server, MAX_FRAME), Err(ProtocolError::ReservedBits));
    }
}

#[test]
fn reserved_opcodes_rejected() {
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        let frame = raw_frame(0x80 | opcode, 0x80, &KEY);
        assert_eq!(decode_header(&frame, Role::Server, MAX_FRAME), Err(ProtocolError::ReservedOpCode(opcode)));
    }
    for opcode in [0x0, 0x1, 0x2, 0x8, 0x9, 0xA] {
        assert_eq!(OpCode::from_bits(opcode).unwrap().bits(), opcode);
    }
}

#[test]
fn control_frame_too_long_rejected() {
    for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let frame = client_frame(opcode, true, &[b'a'; 126], KEY);
        assert_eq!(decode_header(&frame, Role::Server, MAX_FRAME), Err(ProtocolError::ControlFrameTooLong));
        let ok = client_frame(opcode, true, &[b'a'; 125], KEY);
        assert!(decode_header(&ok, Role::Server, MAX_FRAME).unwrap().is_some());
    }
}

#[test]
fn fragmented_control_frame_rejected() {
    for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let mut frame = client_frame(opcode, false, b"x", KEY);
        assert_eq!(decoder().decode(&mut frame), Err(ProtocolError::FragmentedControlFrame));
    }
}

#[test]
fn msb_of_64bit_length_rejected() {
    let mut rest = vec![0x80, 0, 0, 0, 0, 0, 0, 1];
    rest.extend_from_slice(&KEY);
    let frame = raw_frame(0x82, 0x80 | 127, &rest);
    assert_eq!(decode_header(&frame, Role::Server, usize::MAX), Err(ProtocolError::InvalidPayloadLength));
}

#[test]
fn frame_too_large_rejected_from_header_alone() {
    // Only the first 4 bytes (up to the 16-bit length) are present.
    let frame = client_frame(OpCode::Binary, true, &payload_of(1000), KEY);
    let err = decode_header(&frame[..4], Role::Server, 999).unwrap_err();
    assert_eq!(err, ProtocolError::FrameTooLarge { len: 1000, max: 999 });
    assert_eq!(err.close_code(), close_code::TOO_BIG);

    // 64-bit length claiming 1 TiB, no payload, no mask yet.
    let mut len = vec![];
    len.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let frame = raw_frame(0x82, 0x80 | 127, &len);
    let mut buf = frame.clone();
    let err = MessageDecoder::new(MAX_FRAME, MAX_MESSAGE).decode(&mut buf).unwrap_err();
    assert_eq!(err, ProtocolError::FrameTooLarge { len: 1 << 40, max: MAX_FRAME });
}

#[test]
fn message_too_large_unfragmented_rejected_before_payload() {
    let frame = client_frame(OpCode::Text, true, &[b'a'; 200], KEY);
    let mut header_only = frame[..8].to_vec();
    let err = MessageDecoder::new(1000, 100).decode(&mut header_only).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { len: 200, max: 100 });
    assert_eq!(err.close_code(), 1009);
}

// ---- masking ----

fn mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

#[test]
fn apply_mask_matches_bytewise_reference() {
    for len in (0..40).chain([63, 64, 65, 1001]) {
        for offset in 0..8 {
            for start in 0..3 {
                // `start` shifts the slice so the u64 loads are unaligned.
                let mut fast = payload_of(len + start);
                let mut reference = fast.clone();
                apply_mask(&mut fast[start..], KEY, offset);
                mask_bytewise(&mut reference[start..], KEY, offset);
                assert_eq!(fast, reference, "len {len} offset {offset} start {start}");
            }
        }
    }
}

#[test]
fn apply_mask_in_chunks_equals_whole() {
    let original = payload_of(103);
    let mut whole = original.clone();
    apply_mask(&mut whole, KEY, 0);
    let mut chunked = original.clone();
    let mut offset = 0;
    for chunk in chunked.chunks_mut(7) {
        apply_mask(chunk, KEY, offset);
        offset += chunk.len();
    }
    assert_eq!(chunked, whole);
    assert_ne!(whole, original);
}

#[test]
fn masked_round_trip_various_sizes() {
    for len in [0, 1, 7, 125, 126, 127, 1023, 65535, 65536, 100_003] {
        let payload = payload_of(len);
        let mut frame = client_frame(OpCode::Binary, true, &payload, KEY);
        if len >= 8 {
            assert_ne!(&frame[frame.len() - len..], &payload[..], "payload not masked on the wire");
        }
        assert_eq!(decode_one(&mut frame).unwrap(), Some(Owned::Binary(payload)), "len {len}");

        let text = "é".repeat(len / 2);
        let mut frame = client_frame(OpCode::Text, true, text.as_bytes(), KEY);
        assert_eq!(decode_one(&mut frame).unwrap(), Some(Owned::Text(text)), "text len {len}");
    }
}

#[test]
fn unfragmented_message_borrows_from_buffer() {
    let mut frame = client_frame(OpCode::Text, true, b"{\"a\":1}", KEY);
    let buf_range = frame.as_ptr_range();
    let mut decoder = decoder();
    let decoded = decoder.decode(&mut frame).unwrap().unwrap();
    let Some(Message::Text(text)) = decoded.message else { panic!("expected text") };
    assert!(buf_range.contains(&text.as_ptr()));
    assert_eq!(text, b"{\"a\":1}");
}

#[test]
fn ping_pong_decode() {
    let mut buf = client_frame(OpCode::Ping, true, b"abc", KEY);
    buf.extend(client_frame(OpCode::Pong, true, b"", KEY));
    let (messages, consumed) = decode_all(&mut decoder(), &mut buf).unwrap();
    assert_eq!(consumed, buf.len());
    assert_eq!(messages, vec![Owned::Ping(b"abc".to_vec()), Owned::Pong(vec![])]);
}

// ---- fragmentation ----

#[test]
fn fragmented_text_with_interleaved_ping() {
    let mut buf = client_frame(OpCode::Text, false, b"Hello, ", KEY);
    buf.extend(client_frame(OpCode::Continuation, false, b"frag", KEY));
    buf.extend(client_frame(OpCode::Ping, true, b"keepalive", KEY));
    buf.extend(client_frame(OpCode::Continuation, true, b"mented world", KEY));

    let mut decoder = decoder();
    let mut pos = 0;
    let mut steps = Vec::new();
    while let Some(decoded) = decoder.decode(&mut buf[pos..]).unwrap() {
        pos += decoded.consumed;
        steps.push(decoded.message.map(Owned::from));
        if steps.len() < 4 {
            assert!(!decoder.is_idle(), "fragment in flight after step {}", steps.len());
        } else {
            assert!(decoder.is_idle());
            // Kept until the next call, since the returned message borrowed it.
            assert!(decoder.holds_fragment_buffer());
        }
    }
    assert_eq!(pos, buf.len());
    assert_eq!(
        steps,
        vec![None, None, Some(Owned::Ping(b"keepalive".to_vec())), Some(Owned::Text("Hello, fragmented world".into())),]
    );
    assert!(decoder.is_idle());
    assert!(!decoder.holds_fragment_buffer(), "freed by the decode call that returned None");
}

#[test]
fn fragmented_binary_assembles() {
    let payload = payload_of(5000);
    let mut buf = Vec::new();
    for (i, chunk) in payload.chunks(1000).enumerate() {
        let opcode = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        buf.extend(client_frame(opcode, i == 4, chunk, KEY));
    }
    let mut decoder = MessageDecoder::new(1000, 5000);
    let (messages, consumed) = decode_all(&mut decoder, &mut buf).unwrap();
    assert_eq!(consumed, buf.len());
    assert_eq!(messages, vec![Owned::Binary(payload)]);
}

#[test]
fn continuation_without_start_rejected() {
    let mut frame = client_frame(OpCode::Continuation, true, b"x", KEY);
    let err = decoder().decode(&mut frame).unwrap_err();
    assert_eq!(err, ProtocolError::UnexpectedContinuation);
    assert_eq!(err.close_code(), 1002);
}

#[test]
fn new_data_frame_during_fragmented_message_rejected() {
    for opcode in [OpCode::Text, OpCode::Binary] {
        let mut buf = client_frame(OpCode::Text, false, b"start", KEY);
        buf.extend(client_frame(opcode, true, b"new", KEY));
        assert_eq!(decode_all(&mut decoder(), &mut buf), Err(ProtocolError::ExpectedContinuation));
    }
}

#[test]
fn message_too_large_across_fragments_rejected() {
    let mut buf = client_frame(OpCode::Binary, false, &[0; 60], KEY);
    buf.extend(client_frame(OpCode::Continuation, false, &[0; 40], KEY));
    let third = client_frame(OpCode::Continuation, true, &[0; 1], KEY);
    // Only the third frame's header is buffered: rejected before its payload.
    buf.extend(&third[..6]);
    let err = decode_all(&mut MessageDecoder::new(100, 100), &mut buf).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { len: 101, max: 100 });
    assert_eq!(err.close_code(), close_code::TOO_BIG);
}

#[test]
fn message_at_exact_limit_accepted() {
    let mut buf = client_frame(OpCode::Binary, false, &[0; 60], KEY);
    buf.extend(client_frame(OpCode::Continuation, true, &[0; 40], KEY));
    let (messages, _) = decode_all(&mut MessageDecoder::new(100, 100), &mut buf).unwrap();
    assert_eq!(messages, vec![Owned::Binary(vec![0; 100])]);
}

// ---- UTF-8 ----

#[test]
fn invalid_utf8_single_frame_rejected() {
    let mut frame = client_frame(OpCode::Text, true, &[b'o', b'k', 0xff, b'!'], KEY);
    let err = decoder().decode(&mut frame).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    assert_eq!(err.close_code(), close_code::INVALID_PAYLOAD);
}

#[test]
fn invalid_utf8_across_fragments_rejected() {
    // "é" is C3 A9; C3 followed by an ASCII byte in the next fragment is invalid.
    let mut buf = client_frame(OpCode::Text, false, b"ab\xC3", KEY);
    buf.extend(client_frame(OpCode::Continuation, true, b"x", KEY));
    let err = decode_all(&mut decoder(), &mut buf).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    assert_eq!(err.close_code(), 1007);
}

#[test]
fn truncated_utf8_at_message_end_rejected() {
    let mut buf = client_frame(OpCode::Text, false, b"ab", KEY);
    buf.extend(client_frame(OpCode::Continuation, true, b"\xF0\x9F\x98", KEY));
    assert_eq!(decode_all(&mut decoder(), &mut buf), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn multibyte_char_split_across_fragments_is_valid() {
    let text = "a😀b€c";
    let bytes = text.as_bytes();
    // Split at every position, including inside the 4-byte and 3-byte chars.
    for split_a in 1..bytes.len() {
        for split_b in split_a..bytes.len() {
            let mut buf = client_frame(OpCode::Text, false, &bytes[..split_a], KEY);
            buf.extend(client_frame(OpCode::Continuation, false, &bytes[split_a..split_b], KEY));
            buf.extend(client_frame(OpCode::Continuation, true, &bytes[split_b..], KEY));
            let (messages, _) = decode_all(&mut decoder(), &mut buf).unwrap();
            assert_eq!(messages, vec![Owned::Text(text.into())], "splits {split_a} {split_b}");
        }
    }
}

// ---- close frames ----

#[test]
fn close_frame_parsing() {
    let close = |payload: &[u8]| decode_one(&mut client_frame(OpCode::Close, true, payload, KEY));

    assert_eq!(close(b""), Ok(Some(Owned::Close(None))));
    assert_eq!(close(&[0x03, 0xE8]), Ok(Some(Owned::Close(Some((1000, String::new()))))));
    assert_eq!(close(b"\x0F\xA0bye \xE2\x82\xAC"), Ok(Some(Owned::Close(Some((4000, "bye €".into()))))));

    assert_eq!(close(&[0x03]), Err(ProtocolError::InvalidClosePayload));
    assert_eq!(ProtocolError::InvalidClosePayload.close_code(), 1002);
    for code in [1012u16, 1013, 1014] {
        assert_eq!(
            close(&code.to_be_bytes()),
            Ok(Some(Owned::Close(Some((code, String::new()))))),
            "IANA-registered {code}"
        );
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, u16::MAX] {
        let err = close(&code.to_be_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidCloseCode(code));
        assert_eq!(err.close_code(), 1002);
    }
    let mut invalid_reason = 1000u16.to_be_bytes().to_vec();
    invalid_reason.extend_from_slice(b"\xC3(");
    assert_eq!(close(&invalid_reason), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn close_code_validity() {
    let valid: Vec<u16> = (0..=u16::MAX).filter(|&c| is_valid_close_code(c)).collect();
    let expected: Vec<u16> = (1000..=1003).chain(1007..=1014).chain(3000..=4999).collect();
    assert_eq!(valid, expected);
}

#[test]
fn close_frame_encoding() {
    let frame = close_frame(close_code::GOING_AWAY, "shutting down");
    assert_eq!(&frame[..4], &[0x88, 15, 0x03, 0xE9]);
    assert_eq!(&frame[4..], b"shutting down");

    let mut decoder = MessageDecoder::with_role(Role::Client, MAX_FRAME, MAX_MESSAGE);
    let mut buf = frame.to_vec();
    let decoded = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(decoded.message, Some(Message::Close(Some(CloseFrame { code: 1001, reason: "shutting down" }))));
}

#[test]
fn close_frame_reason_truncated_at_char_boundary() {
    // 122 ASCII bytes then a 2-byte char: 123 bytes fit only if the char is cut,
    // so it must be dropped entirely.
    let reason = format!("{}é", "a".repeat(122));
    let frame = close_frame(1000, &reason);
    let payload = &frame[2..];
    assert_eq!(payload.len(), 2 + 122);
    assert_eq!(&payload[2..], "a".repeat(122).as_bytes());

    let long = "€".repeat(100);
    let frame = close_frame(1000, &long);
    assert_eq!(frame[1] as usize, frame.len() - 2);
    assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
    assert_eq!(frame.len() - 4, 123); // 41 three-byte chars fill 123 bytes exactly
    let parsed = CloseFrame::parse(&frame[2..]).unwrap().unwrap();
    assert_eq!(parsed.reason, "€".repeat(41));
}

// ---- encoding ----

#[test]
fn encode_header_round_trips_all_length_classes() {
    for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 32, (1 << 63) - 1] {
        for (fin, opcode) in [(true, OpCode::Text), (false, OpCode::Binary), (true, OpCode::Continuation)] {
            let mut out = [0; MAX_HEADER_LEN];
            let header_len = encode_header(&mut out, fin, opcode, len, None);
            let expected_len = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(header_len, expected_len, "len {len}");
            let header = decode_header(&out[..header_len], Role::Client, usize::MAX).unwrap().unwrap();
            assert_eq!(header, FrameHeader { fin, opcode, mask: None, payload_len: len, header_len });

            let masked_len = encode_header(&mut out, fin, opcode, len, Some(KEY));
            assert_eq!(masked_len, expected_len + 4);
            let header = decode_header(&out[..masked_len], Role::Server, usize::MAX).unwrap().unwrap();
            assert_eq!(header.mask, Some(KEY));
            assert_eq!(header.payload_len, len);
        }
    }
}

#[test]
fn server_frame_decodes_as_client() {
    for len in [0, 125, 126, 65536] {
        let payload = payload_of(len);
        let frame = server_frame(OpCode::Binary, &payload);
        let mut buf = frame.to_vec();
        let mut decoder = MessageDecoder::with_role(Role::Client, MAX_FRAME, MAX_MESSAGE);
        let (messages, consumed) = decode_all(&mut decoder, &mut buf).unwrap();
        assert_eq!(consumed, frame.len());
        assert_eq!(messages, vec![Owned::Binary(payload)]);
    }
    assert_eq!(&server_text(b"hi")[..], &[0x81, 2, b'h', b'i']);
}

// ---- caller loop ----

#[test]
fn caller_loop_with_trailing_partial_frame() {
    let mut stream = Vec::new();
    stream.extend(client_frame(OpCode::Text, true, b"one", KEY));
    stream.extend(client_frame(OpCode::Binary, false, b"tw", KEY));
    stream.extend(client_frame(OpCode::Pong, true, b"", KEY));
    stream.extend(client_frame(OpCode::Continuation, true, b"o", KEY));
    stream.extend(client_frame(OpCode::Text, true, &[b'3'; 300], KEY));
    stream.extend(client_frame(OpCode::Close, true, &1000u16.to_be_bytes(), KEY));
    let trailing = client_frame(OpCode::Text, true, b"four", KEY);
    let complete_len = stream.len();
    stream.extend(&trailing[..7]);

    let mut buf = stream.clone();
    let mut decoder = decoder();
    let (messages, consumed) = decode_all(&mut decoder, &mut buf).unwrap();
    assert_eq!(consumed, complete_len);
    assert_eq!(&buf[consumed..], &trailing[..7], "trailing partial frame must stay masked");
    assert_eq!(
        messages,
        vec![
            Owned::Text("one".into()),
            Owned::Pong(vec![]),
            Owned::Binary(b"two".to_vec()),
            Owned::Text("3".repeat(300)),
            Owned::Close(Some((1000, String::new()))),
        ]
    );

    // The socket delivers the rest; the caller compacts and appends.
    buf.drain(..consumed);
    buf.extend(&trailing[7..]);
    let (messages, consumed) = decode_all(&mut decoder, &mut buf).unwrap();
    assert_eq!(consumed, trailing.len());
    assert_eq!(messages, vec![Owned::Text("four".into())]);
}

#[test]
fn byte_at_a_time_stream_decodes_identically() {
    let mut stream = Vec::new();
    stream.extend(client_frame(OpCode::Text, false, "ü".as_bytes(), KEY));
    stream.extend(client_frame(OpCode::Ping, true, b"p", KEY));
    stream.extend(client_frame(OpCode::Continuation, true, &[b'z'; 200], KEY));

    let mut decoder = decoder();
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    for &byte in &stream {
        buf.push(byte);
        let (new, consumed) = decode_all(&mut decoder, &mut buf).unwrap();
        buf.drain(..consumed);
        messages.extend(new);
    }
    assert!(buf.is_empty());
    assert_eq!(messages, vec![Owned::Ping(b"p".to_vec()), Owned::Text(format!("ü{}", "z".repeat(200)))]);
}

#[test]
fn error_close_codes() {
    assert_eq!(ProtocolError::ReservedBits.close_code(), 1002);
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
    assert_eq!(ProtocolError::FrameTooLarge { len: 1, max: 0 }.close_code(), 1009);
    assert_eq!(ProtocolError::ReservedOpCode(3).to_string(), "reserved opcode 0x3");
}

#[test]
fn idle_decoder_is_small() {
    assert!(std::mem::size_of::<MessageDecoder>() <= 4 * std::mem::size_of::<usize>());
}
