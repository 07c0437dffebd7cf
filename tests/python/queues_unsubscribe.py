"""A paho worker (MQTT 5, acknowledging by hand, Receive Maximum 12) unsubscribes from a
work queue while it holds 10 unacknowledged jobs. The jobs go to another worker at once,
flagged DUP; but the worker still holds their packet ids, so the broker must not reuse
them (MQTT-2.2.1-3) and must count them against its Receive Maximum (MQTT-3.3.4-9) until
the worker acknowledges them: of 5 news messages, 2 come meanwhile, with other packet
ids, and the other 3 after the acknowledgements. The worker's late acknowledgements
finish nothing: each job is done once, by the other worker."""

import motepaho as mp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main():
    args = mp.parser(__doc__, versions=False).parse_args()
    run = mp.Run(args, "queues_unsubscribe")
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 12
    w = mp.Client("qu-worker", "5", connect_props=props, manual_ack=True)
    w.connect(args.port)
    run.eq("suback_worker", w.subscribe([("$queue/qu", 1), ("qu/news", 1)]), [1, 1])
    prod = mp.Client("qu-producer", "5")
    prod.connect(args.port)
    for i in range(10):
        prod.publish_wait("$queue/qu", f"job-{i}", qos=1)
    mp.pump([w, prod], lambda: len(w.messages) >= 10, 10.0)
    mp.settle([w, prod], 0.3)
    jobs = w.take()
    run.eq("worker_holds_ten_jobs", sorted(m.text() for m in jobs), sorted(f"job-{i}" for i in range(10)))
    held = {m.mid for m in jobs}
    run.eq("unsuback", w.unsubscribe("$queue/qu"), [0])

    other = mp.Client("qu-other", "311")
    other.connect(args.port)
    run.eq("suback_other", other.subscribe("$queue/qu", 1), [1])
    everyone = [w, prod, other]
    mp.pump(everyone, lambda: len(other.messages) >= 10, 10.0)
    mp.settle(everyone, 0.3)
    again = other.take()
    run.eq("jobs_went_to_the_other_worker", sorted(m.text() for m in again), sorted(m.text() for m in jobs))
    run.check("flagged_dup", all(m.dup for m in again), dup=[m.dup for m in again])

    for i in range(5):
        prod.publish_wait("qu/news", f"news-{i}", qos=1)
    # Time enough for the broker to send all five if it were to.
    mp.settle(everyone, 1.0)
    news = w.take()
    run.eq("news_within_receive_maximum", [m.text() for m in news], ["news-0", "news-1"])
    run.check("no_held_packet_id_reused", not any(m.mid in held for m in news),
              held=sorted(held), news=[m.mid for m in news])
    for m in jobs + news:
        w.c.ack(m.mid, m.qos)
    mp.pump(everyone, lambda: len(w.messages) >= 3, 5.0)
    mp.settle(everyone, 0.3)
    rest = w.take()
    run.eq("rest_after_the_acknowledgements", [m.text() for m in rest], ["news-2", "news-3", "news-4"])
    for m in rest:
        w.c.ack(m.mid, m.qos)
    mp.settle(everyone, 0.3)
    run.eq("no_job_done_again", [m.text() for m in other.take() + w.take()], [])
    for c in everyone:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
