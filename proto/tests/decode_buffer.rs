//! A stream's decode buffer holds one message. tonic reserves room for a
//! message's body when it reads its header; a body that arrived in the same
//! chunk must not be counted twice, or the buffer doubles for the stream's
//! life (the patch carried in `third_party/tonic`).
//!
//! Alone in its binary: it watches every allocation the process makes.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use prost::Message;
use proto::{codec::MessageChunks, v1::NodeReport};
use tonic::codec::{Codec, Streaming};

/// The largest block asked for while [`WATCHING`].
struct Largest;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn saw(size: usize) {
    if WATCHING.load(Relaxed) {
        LARGEST.fetch_max(size, Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        saw(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        saw(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// tonic's initial decode buffer.
const BUFFER: usize = 8 * 1024;

#[tokio::test(flavor = "current_thread")]
async fn a_message_that_arrives_whole_is_read_without_growing_the_buffer() {
    // 6,000 bytes a message: fits the buffer once, not twice.
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
    let chunk: Bytes = chunk.freeze();
    assert!(chunk.len() < BUFFER && 2 * chunk.len() > BUFFER);
    // One HTTP/2 data chunk per message, as `MessageChunks` sends them.
    let chunks = (0..40).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let decoder = MessageChunks::<NodeReport, NodeReport>::default().decoder();
    let mut stream = Streaming::new_request(
        decoder,
        http_body_util::StreamBody::new(futures::stream::iter(chunks)),
        None,
        None,
    );

    WATCHING.store(true, Relaxed);
    let mut read = 0;
    while let Some(message) = stream.next().await {
        assert_eq!(message.expect("decodes"), report);
        read += 1;
    }
    WATCHING.store(false, Relaxed);

    assert_eq!(read, 40);
    let largest = LARGEST.load(Relaxed);
    assert!(
        largest <= BUFFER,
        "a block of {largest} bytes was asked for: the decode buffer grew past {BUFFER}"
    );
}
