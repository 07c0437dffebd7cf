"""Work queues `$queue/NAME` with paho workers acknowledging by hand (manual_ack):
competing consumers each get distinct jobs, at most the prefetch (10) unacknowledged
each; acknowledgements in any order; a worker that dies holding jobs leaves them to the
others, flagged DUP; v5 and 3.1.1 workers take part alike; every job is done exactly
once by a live worker."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    p.add_argument("--count", type=int, default=200)
    args = p.parse_args()
    run = mp.Run(args, "queues")
    n = args.count
    jobs = [f"job-{i}" for i in range(n)]

    workers = []
    for i in range(4):
        version = "5" if i % 2 == 0 else "311"
        w = mp.Client(f"queue-w{i}-{args.version}", version, manual_ack=True)
        w.connect(args.port)
        run.eq(f"suback_w{i}", w.subscribe("$queue/jobs", 1), [1])
        workers.append(w)
    prod = mp.Client(f"queue-prod-{args.version}", args.version)
    prod.connect(args.port)
    mids = [prod.publish("$queue/jobs", j, qos=1) for j in jobs]

    doomed, live = workers[0], workers[1:]
    held = []
    done = {}  # job -> (worker index, dup flag)
    twice = []
    max_burst = 0

    def work():
        nonlocal max_burst
        for i, w in enumerate(live, start=1):
            batch = w.take()
            max_burst = max(max_burst, len(batch))
            # Finish the batch newest first: acknowledgements in any order.
            for m in reversed(batch):
                if m.text() in done:
                    twice.append(m.text())
                done[m.text()] = (i, m.dup)
                w.c.ack(m.mid, m.qos)
        held.extend(doomed.take())
        return len(done) >= n

    # The doomed worker holds what it gets and never acknowledges.
    mp.pump(workers + [prod], lambda: work() or len(held) >= 10, 10.0)
    mp.settle(workers + [prod], 0.3)
    work()
    run.check("doomed_holds_at_most_prefetch", 0 < len(held) <= 10, held=len(held))
    doomed.drop()
    mp.pump(live + [prod], work, 20.0)
    mp.settle(live + [prod], 0.5)
    work()

    held_jobs = [m.text() for m in held]
    run.eq("every_job_done_by_a_live_worker", sorted(done, key=lambda s: int(s[4:])), jobs)
    run.eq("no_job_done_twice", twice, [])
    run.check("held_jobs_came_back_flagged_dup",
              all(done.get(j, (0, False))[1] for j in held_jobs), held=held_jobs)
    run.check("fresh_jobs_not_flagged_dup",
              not any(dup for j, (_, dup) in done.items() if j not in held_jobs))
    per_worker = {i: sum(1 for (w, _) in done.values() if w == i) for i in (1, 2, 3)}
    run.check("v5_and_311_workers_both_worked",
              per_worker[2] > 0 and (per_worker[1] + per_worker[3]) > 0, per=per_worker)
    run.check("at_most_prefetch_per_delivery_burst", max_burst <= 10, burst=max_burst)
    run.eq("producer_acknowledged", sorted(m for m in mids if m in prod.acked), sorted(mids))
    for c in live + [prod]:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
