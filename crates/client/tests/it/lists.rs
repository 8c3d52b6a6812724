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
