//! What an agent's stream holds between its messages: nothing to read them
//! with. tonic's decode buffer holds one message, and only while it is read:
//! tonic reserves room for a message's body when it reads its header, and a
//! body that arrived in the same chunk must not be counted twice, or the
//! buffer doubles for the stream's life; a buffer the message emptied is let
//! go (the patches carried in `third_party/tonic`). A connection waiting for
//! its peer holds none of h2's buffers: its read and write buffers are let go
//! when empty, its header decoder's scratch room is what each header needs
//! (`third_party/h2`).
//!
//! Alone in its binary: it watches every allocation its test's thread makes.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use prost::Message;
use proto::{codec::MessageChunks, v1::NodeReport};
use tonic::codec::{Codec, Streaming};

/// While a thread is [`WATCHING`]: the largest block it asked for, and the
/// bytes it allocated less those it freed, in all and in blocks of at least
/// [`LARGE_BLOCK`].
struct Watched;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static HELD: Cell<isize> = const { Cell::new(0) };
    static LARGE: Cell<isize> = const { Cell::new(0) };
}

/// A block this large is a buffer, not a connection's or a stream's state.
const LARGE_BLOCK: usize = 4096;

fn saw(allocated: usize, freed: usize) {
    if WATCHING.get() {
        LARGEST.set(LARGEST.get().max(allocated));
        HELD.set(HELD.get() + allocated as isize - freed as isize);
        let large = |n: usize| if n >= LARGE_BLOCK { n as isize } else { 0 };
        LARGE.set(LARGE.get() + large(allocated) - large(freed));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        saw(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        saw(0, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        saw(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// tonic's initial decode buffer.
const BUFFER: usize = 8 * 1024;

/// A report of about 6,000 bytes (fits the buffer once, not twice) and the
/// one HTTP/2 data chunk that carries it, as `MessageChunks` sends them.
fn report_and_chunk() -> (NodeReport, Bytes) {
    let report = NodeReport {
        node: "n".repeat(6_000),
        seq: 1,
        ..NodeReport::default()
    };
    let body = report.encode_to_vec();
    let mut chunk = BytesMut::new();
    chunk.put_u8(0);
    chunk.put_u32(u32::try_from(body.len()).expect("length"));
    chunk.put_slice(&body);
    let chunk = chunk.freeze();
    assert!(chunk.len() < BUFFER && 2 * chunk.len() > BUFFER);
    (report, chunk)
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_that_arrives_whole_is_read_without_growing_the_buffer() {
    let (report, chunk) = report_and_chunk();
    let chunks = (0..40).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let decoder = MessageChunks::<NodeReport, NodeReport>::default().decoder();
    let mut stream = Streaming::new_request(
        decoder,
        http_body_util::StreamBody::new(futures::stream::iter(chunks)),
        None,
        None,
    );

    WATCHING.set(true);
    let mut read = 0;
    while let Some(message) = stream.next().await {
        assert_eq!(message.expect("decodes"), report);
        read += 1;
    }
    WATCHING.set(false);

    assert_eq!(read, 40);
    let largest = LARGEST.get();
    assert!(
        largest <= BUFFER,
        "a block of {largest} bytes was asked for: the decode buffer grew past {BUFFER}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn between_messages_a_stream_holds_no_buffer() {
    let (report, chunk) = report_and_chunk();
    // A body that stays open after its one message, as an agent's stream
    // between reports. The chunk stays referenced here, so the stream's
    // dropping its copy frees nothing that was allocated before watching.
    let body = futures::stream::iter([Ok::<_, Infallible>(Frame::data(chunk.clone()))])
        .chain(futures::stream::pending());

    WATCHING.set(true);
    let decoder = MessageChunks::<NodeReport, NodeReport>::default().decoder();
    let mut stream =
        Streaming::new_request(decoder, http_body_util::StreamBody::new(body), None, None);
    let message = stream.next().await.expect("a message").expect("decodes");
    assert_eq!(message, report);
    drop(message);
    let held = HELD.get();
    WATCHING.set(false);

    assert!(
        held < 1024,
        "the stream holds {held} bytes after its message was read: its decode buffer was kept"
    );
    drop((stream, chunk));
}

#[test]
fn a_connection_waiting_for_its_peer_holds_no_buffer() {
    // A frame larger than h2's initial 8 KiB read buffer, which a kept buffer
    // would have to grow for.
    const FRAME: usize = 12_000;
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let (go, go_ahead) = tokio::sync::oneshot::channel::<()>();
    // The client on a thread of its own: only the server's allocations, on
    // this one, are counted.
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (mut h2, connection) = h2::client::handshake(client_io).await.expect("handshake");
            let connection = tokio::spawn(connection);
            let request = http::Request::post("http://node.example/report")
                .body(())
                .expect("request");
            let (_response, mut body) = h2.send_request(request, false).expect("sends");
            go_ahead.await.expect("told to send");
            body.send_data(Bytes::from(vec![7; FRAME]), false)
                .expect("sends data");
            // Kept open, as an agent's stream is, until the server goes.
            let _ = connection.await;
        });
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (held, large) = runtime.block_on(async move {
        WATCHING.set(true);
        let mut connection = h2::server::handshake(server_io).await.expect("handshake");
        let (request, _respond) = connection
            .accept()
            .await
            .expect("a request")
            .expect("accepted");
        // The connection driven beside the request's body, as hyper does.
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut body = request.into_body();
        go.send(()).expect("client waits");
        let mut read = 0;
        while read < FRAME {
            let data = body.data().await.expect("data").expect("reads");
            read += data.len();
            body.flow_control()
                .release_capacity(data.len())
                .expect("releases");
        }
        // The connection's task read to the end of what came before the
        // data reached the body, and wrote what it had to; it waits for its
        // peer now.
        let held = (HELD.get(), LARGE.get());
        WATCHING.set(false);
        held
    });
    drop(runtime);
    client.join().expect("the client ends with the connection");

    assert_eq!(
        large, 0,
        "a connection waiting for its peer holds {large} bytes in blocks of {LARGE_BLOCK} bytes or more \
         ({held} in all): h2's read buffer (8 KiB, grown to the {FRAME}-byte frame), write \
         buffer (16 KiB) or header scratch (4 KiB) was kept"
    );
}
