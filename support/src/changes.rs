//! A kube-runtime watcher's events as its consumers here use them: each
//! listing gathered into one [`Change::Listed`] that replaces what was held,
//! then the changes since, with the routine 410 Gone (the watcher lists
//! again) left out.
use futures::{Stream, StreamExt, future};
use kube::runtime::watcher::{Error, Event};
use tracing::debug;

/// What a watched set did.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<K> {
    /// Everything that exists now: what was held and is not here is gone.
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// `events` (a watcher's) as [`Change`]s; errors other than 410 Gone pass
/// through for the caller to report. `what` names the watch in the log.
pub fn changes<K>(
    events: impl Stream<Item = Result<Event<K>, Error>>,
    what: &'static str,
) -> impl Stream<Item = Result<Change<K>, Error>> {
    let mut listing: Option<Vec<K>> = None;
    events.filter_map(move |event| {
        future::ready(match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(k)) => {
                listing.get_or_insert_default().push(k);
                None
            }
            Ok(Event::InitDone) => Some(Ok(Change::Listed(listing.take().unwrap_or_default()))),
            Ok(Event::Apply(k)) => Some(Ok(Change::Applied(k))),
            Ok(Event::Delete(k)) => Some(Ok(Change::Deleted(k))),
            Err(e) if is_expired(&e) => {
                debug!(watch = what, "watch expired (410 Gone); listing again");
                None
            }
            Err(e) => Some(Err(e)),
        })
    })
}

/// 410 Gone: the version a watch resumed from was compacted away. The
/// watcher lists again; this is routine, not a failure worth a warning.
fn is_expired(error: &Error) -> bool {
    matches!(error, Error::WatchError(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use kube::core::Status;

    use super::*;

    fn status(code: u16) -> Error {
        Error::WatchError(Box::new(Status::failure("watch", "Reason").with_code(code)))
    }

    #[tokio::test]
    async fn a_listing_arrives_whole_and_changes_follow() {
        let events = stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply("a")),
            Ok(Event::InitApply("b")),
            Ok(Event::InitDone),
            Ok(Event::Apply("c")),
            Err(status(410)),
            Ok(Event::Delete("a")),
            Err(status(500)),
            // A listing again, this time empty: everything held is gone.
            Ok(Event::Init),
            Ok(Event::InitDone),
        ]);
        let got: Vec<_> = changes(events, "test").collect().await;
        let [
            Ok(Change::Listed(listed)),
            Ok(Change::Applied("c")),
            Ok(Change::Deleted("a")),
            Err(Error::WatchError(error)),
            Ok(Change::Listed(relisted)),
        ] = got.as_slice()
        else {
            panic!("{got:?}")
        };
        assert_eq!(listed, &["a", "b"]);
        assert_eq!(error.code, 500);
        assert!(relisted.is_empty());
    }
}
