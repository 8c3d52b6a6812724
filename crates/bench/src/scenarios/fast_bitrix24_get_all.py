# Baseline of the rest-bulk scenario: fast_bitrix24's get_all of every deal
# through an incoming webhook. argv: webhook URL, request_pool_size,
# requests_per_second. Prints one JSON line.
import asyncio
import json
import sys
import time

from fast_bitrix24 import BitrixAsync


async def main():
    url, pool, rps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    b = BitrixAsync(
        url,
        verbose=False,
        request_pool_size=pool,
        requests_per_second=rps,
        ssl=False,
    )
    t = time.perf_counter()
    items = await b.get_all("crm.deal.list", params={"select": ["ID", "TITLE"]})
    secs = time.perf_counter() - t
    ids = {int(i["ID"]) for i in items}
    print(json.dumps({"items": len(items), "unique_ids": len(ids), "secs": secs}))


asyncio.run(main())
