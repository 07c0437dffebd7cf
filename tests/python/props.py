"""v5 PUBLISH properties pass through unchanged: User Properties in order (names may
repeat), Content Type, Payload Format Indicator, Response Topic, Correlation Data; the
Message Expiry Interval is forwarded (at most the original). A request/response round
trip uses the Response Topic and Correlation Data. Also checked on a retained message."""

import motepaho as mp


def publish_props(expiry=None):
    p = mp.Properties(mp.PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v1"), ("a", "x"), ("k", "v2"), ("k", "v1"), ("ünï", "çødé")]
    p.ContentType = "application/json; charset=utf-8"
    p.PayloadFormatIndicator = 1
    p.ResponseTopic = "props/reply/42"
    p.CorrelationData = b"\x00\x01corr\xff"
    if expiry is not None:
        p.MessageExpiryInterval = expiry
    return p


EXPECTED_USER = [("k", "v1"), ("a", "x"), ("k", "v2"), ("k", "v1"), ("ünï", "çødé")]


def main():
    p = mp.parser(__doc__, versions=False)
    args = p.parse_args()
    run = mp.Run(args, "props")
    sub = mp.Client("props-sub", "5")
    pub = mp.Client("props-pub", "5")
    sub.connect(args.port)
    pub.connect(args.port)
    sub.subscribe("props/req", 1)
    pub.subscribe("props/reply/#", 1)

    for qos in (0, 1, 2):
        pub.publish("props/req", '{"q": %d}' % qos, qos=qos, props=publish_props(expiry=300))
        mp.pump([sub, pub], lambda: sub.messages, 3.0)
        got = sub.take()
        run.eq(f"q{qos}_one_message", len(got), 1)
        if not got:
            continue
        m = got[0]
        pr = m.props
        run.eq(f"q{qos}_user_properties_in_order", pr.get("UserProperty"), EXPECTED_USER)
        run.eq(f"q{qos}_content_type", pr.get("ContentType"), "application/json; charset=utf-8")
        run.eq(f"q{qos}_payload_format", pr.get("PayloadFormatIndicator"), 1)
        run.eq(f"q{qos}_response_topic", pr.get("ResponseTopic"), "props/reply/42")
        run.eq(f"q{qos}_correlation_data", pr.get("CorrelationData"),
               b"\x00\x01corr\xff".decode("latin-1"))
        exp = pr.get("MessageExpiryInterval")
        run.check(f"q{qos}_expiry_forwarded", exp is not None and 295 <= exp <= 300, got=exp)
        run.eq(f"q{qos}_payload", m.text(), '{"q": %d}' % qos)

        # Answer on the response topic with the correlation data.
        rp = mp.Properties(mp.PacketTypes.PUBLISH)
        rp.CorrelationData = b"\x00\x01corr\xff"
        sub.publish(pr.get("ResponseTopic", "props/reply/none"), f"answer-{qos}", qos=1,
                    props=rp)
        mp.pump([sub, pub], lambda: pub.messages, 3.0)
        ans = pub.take()
        run.eq(f"q{qos}_response", [(a.topic, a.text(), a.props.get("CorrelationData"))
                                    for a in ans],
               [("props/reply/42", f"answer-{qos}", b"\x00\x01corr\xff".decode("latin-1"))])

    # A message without properties arrives without any of them.
    pub.publish_wait("props/req", "bare", qos=1)
    mp.pump([sub], lambda: sub.messages, 3.0)
    got = sub.take()
    run.eq("bare_has_no_properties",
           [sorted(k for k in m.props if k != "SubscriptionIdentifier") for m in got], [[]])

    # Retained with properties: a new subscriber sees the same properties.
    pub.publish_wait("props/retained", "kept", qos=1, retain=True, props=publish_props())
    late = mp.Client("props-late", "5")
    late.connect(args.port)
    late.subscribe("props/retained", 1)
    mp.pump([late], lambda: late.messages, 3.0)
    got = late.take()
    run.eq("retained_count", len(got), 1)
    if got:
        pr = got[0].props
        run.eq("retained_user_properties", pr.get("UserProperty"), EXPECTED_USER)
        run.eq("retained_content_type", pr.get("ContentType"), "application/json; charset=utf-8")
        run.eq("retained_response_topic", pr.get("ResponseTopic"), "props/reply/42")
        run.eq("retained_correlation", pr.get("CorrelationData"),
               b"\x00\x01corr\xff".decode("latin-1"))
        run.eq("retained_payload_format", pr.get("PayloadFormatIndicator"), 1)
    pub.publish_wait("props/retained", b"", qos=1, retain=True)
    for c in (sub, pub, late):
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
