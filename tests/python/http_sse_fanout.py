"""1,000 concurrent SSE clients (httpx's AsyncClient, one connection each) subscribe to
one filter; one HTTP publish reaches every one of them, and the broker's resident set
size (`VmRSS` of `/proc/--pid/status`) stays under `--max-rss-mb` while they are open.

The broker must admit that many sockets from one address at once: run it with
`[mqtt] max_pending_per_ip = 0` (an HTTP socket counts as pending until its first
request)."""

import asyncio
import time

import httpx

from http_common import client, mp, parser


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


async def subscriber(http, ready, go, results, i):
    """Opens a stream, says it is subscribed, and returns the first message's payload."""
    try:
        async with http.stream("GET", "/api/v1/subscribe", params={"filter": "fan/#"}) as r:
            if r.status_code != 200:
                results[i] = f"status {r.status_code}"
                ready.release()
                return
            ready.release()
            await go.wait()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    results[i] = line[len("data: "):]
                    return
    except Exception as e:  # noqa: BLE001 (reported as this client's result)
        results[i] = f"{type(e).__name__}: {e}"
        ready.release()


async def fanout(run, args):
    n = args.clients
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    timeout = httpx.Timeout(20.0, pool=20.0)
    results = [None] * n
    ready = asyncio.Semaphore(0)
    go = asyncio.Event()
    rss_before = rss_kib(args.pid)
    async with httpx.AsyncClient(base_url=f"http://{args.http}", limits=limits,
                                 timeout=timeout) as http:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(subscriber(http, ready, go, results, i)) for i in range(n)]
        for _ in range(n):
            await asyncio.wait_for(ready.acquire(), 20.0)
        opened = time.monotonic() - t0
        refused = [r for r in results if r is not None]
        run.eq("all_streams_opened", len(refused), 0, first=refused[:3])
        run.info(streams=n, open_seconds=round(opened, 2))

        with client(args) as h:
            s = h.get("/api/v1/stats").json()
            run.check("broker_counts_the_clients", s["clients_connected"] >= n,
                      clients_connected=s["clients_connected"])
            rss_open = rss_kib(args.pid)
            t1 = time.monotonic()
            r = h.post("/api/v1/publish",
                       json={"topic": "fan/all", "payload": "to-everyone", "qos": 1})
            run.eq("publish_200", r.status_code, 200, body=r.text)
        go.set()
        done, pending = await asyncio.wait(tasks, timeout=20.0)
        for t in pending:
            t.cancel()
        delivered = time.monotonic() - t1
        rss_after = rss_kib(args.pid)
        hwm = rss_kib(args.pid, "VmHWM")
        got = [r for r in results if r is not None and '"payload":"to-everyone"' in r]
        wrong = [r for r in results if r is None or '"payload":"to-everyone"' not in r]
        run.eq("every_client_received_the_message", len(got), n, wrong=wrong[:3])
        run.info(delivery_seconds=round(delivered, 2), rss_before_kib=rss_before,
                 rss_open_kib=rss_open, rss_after_delivery_kib=rss_after, hwm_kib=hwm)
        rss_max = max(rss_open or 0, rss_after or 0)
        run.check("rss_bounded", rss_max < args.max_rss_mb * 1024, rss_kib=rss_max,
                  bound_kib=args.max_rss_mb * 1024)


def main():
    p = parser(__doc__)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--max-rss-mb", type=int, default=300)
    args = p.parse_args()
    run = mp.Run(args, "http_sse_fanout")
    asyncio.run(fanout(run, args))
    run.finish()


if __name__ == "__main__":
    main()
