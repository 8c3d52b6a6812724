//! Lists: 20,000 deals in at most ⌈20,000 ÷ 2,500⌉ + 2 requests with the
//! keyset strategy, consumed as it arrives; the offset strategy.

use client::{ListOptions, ListStrategy};
use futures::StreamExt;
use serde_json::json;

use crate::common::{bounded, deal_id, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_all_20000_deals_in_few_requests_as_a_lazy_stream() {
    bounded(async {
        let f = fixture().await;
        f.add_deals(20_000);
        let p = f.portal_client();
        let before = f.stat("requests");
        let mut stream = p.list_all("crm.deal.list", json!({"select": ["ID", "TITLE"]}));
        // Taking the first items costs one request: nothing is fetched ahead.
        let mut last = 0;
        let mut seen = 0u64;
        for _ in 0..100 {
            let d = stream.next().await.unwrap().unwrap();
            let id = deal_id(&d);
            assert!(id > last, "ascending IDs");
            last = id;
            seen += 1;
        }
        assert_eq!(f.stat("requests") - before, 1, "the stream is lazy");
        while let Some(d) = stream.next().await {
            let d = d.unwrap();
            let id = deal_id(&d);
            assert!(id > last, "no duplicates, no gaps in order");
            last = id;
            seen += 1;
            // Memory stays at one batch: at most one request ahead of what
            // was consumed.
            let requests = f.stat("requests") - before;
            assert!(
                requests <= seen.div_ceil(2_500) + 1,
                "{requests} requests after {seen} items"
            );
        }
        assert_eq!(seen, 20_000);
        let requests = f.stat("requests") - before;
        assert!(
            requests <= 20_000u64.div_ceil(2_500) + 2,
            "{requests} requests"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_strategy_batches_the_remaining_pages() {
    bounded(async {
        let f = fixture().await;
        f.add_deals(3_030);
        let p = f.portal_client();
        let before = f.stat("requests");
        let opts = ListOptions {
            strategy: ListStrategy::Offset,
            ..Default::default()
        };
        let items: Vec<_> = p
            .list_all_with("crm.deal.list", json!({"filter": {">ID": 30}}), opts)
            .collect()
            .await;
        let ids: Vec<u64> = items.into_iter().map(|d| deal_id(&d.unwrap())).collect();
        assert_eq!(ids.len(), 3_000);
        assert_eq!(ids.first(), Some(&31));
        assert_eq!(ids.last(), Some(&3_030));
        // One page for the total, then 59 pages in two batches.
        assert_eq!(f.stat("requests") - before, 3);
        // Keyset on the same filter agrees.
        let keyset: Vec<_> = p
            .list_all("crm.deal.list", json!({"filter": {">ID": 30}}))
            .map(|d| deal_id(&d.unwrap()))
            .collect()
            .await;
        assert_eq!(keyset, ids);
    })
    .await;
}

/// The counted keyset walk (the default) ends on the count it took on its
/// first page: ⌈n ÷ 2,500⌉ requests, never a last one only to see the end;
/// without the count the walk needs that extra request when the list ends on
/// a full batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_keyset_walk_stops_on_the_count() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        let f = &f;
        let walk = |count: bool| {
            let p = p.clone();
            async move {
                let opts = ListOptions {
                    keyset_count: count,
                    ..Default::default()
                };
                let before = f.stat("requests");
                let ids: Vec<u64> = p
                    .list_all_with("crm.deal.list", json!({"select": ["ID"]}), opts)
                    .map(|d| deal_id(&d.unwrap()))
                    .collect()
                    .await;
                (ids, f.stat("requests") - before)
            }
        };
        // Empty list: one request either way.
        assert_eq!(walk(true).await, (vec![], 1));
        assert_eq!(walk(false).await, (vec![], 1));
        // Exactly one full batch, then one item more.
        f.add_deals(2_500);
        let (ids, requests) = walk(true).await;
        assert_eq!((ids.len(), requests), (2_500, 1));
        assert_eq!(
            walk(false).await.1,
            2,
            "uncounted: a second request sees the end"
        );
        f.add_deals(1);
        assert_eq!(walk(true).await.1, 2);
        // 20,000: eight requests, the IDs ascending without gaps or repeats.
        f.add_deals(17_499);
        let (ids, requests) = walk(true).await;
        assert_eq!(requests, 8);
        assert_eq!(ids.len(), 20_000);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let (uncounted, requests) = walk(false).await;
        assert_eq!(requests, 9);
        assert_eq!(uncounted, ids);
        // A filter's `>ID` floor is counted too: the walk from 19,990 is one request.
        let before = f.stat("requests");
        let tail: Vec<u64> = p
            .list_all("crm.deal.list", json!({"filter": {">ID": ids[19_989]}}))
            .map(|d| deal_id(&d.unwrap()))
            .collect()
            .await;
        assert_eq!(tail, ids[19_990..].to_vec());
        assert_eq!(f.stat("requests") - before, 1);
    })
    .await;
}
