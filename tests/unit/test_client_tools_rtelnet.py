"""The client tools' own codecs: rtelnet's option refusal in any chunking.
(The request encoders the client sends, and exact-length reply reading,
are sockd.protocol's: they are tested in test_protocol.py.)"""


def test_telnet_refuses_every_option_in_any_chunking():
    from sockd.client.tools.rtelnet import Telnet, encode_line
    stream = (b"\xff\xfd\x18" b"\xff\xfb\x01" b"\xff\xfa\x18\x01" + b"x" * 5000 + b"\xff\xf0"
              b"log\xff\xffin: " b"\xff\xfc\x03" b"\xff\xfe\x05" b"\xff\xf1" b"\xff\xfd\x1f")
    want_text = b"log\xffin: "
    want_answer = b"\xff\xfc\x18" b"\xff\xfe\x01" b"\xff\xfc\x1f"
    for size in (1, 2, 3, 7, len(stream)):
        t = Telnet()
        text, answer = b"", b""
        for i in range(0, len(stream), size):
            a, b = t.feed(stream[i:i + size])
            text += a
            answer += b
        assert (text, answer) == (want_text, want_answer), size
    assert encode_line(b"a\xffb\n") == b"a\xff\xffb\r\n"
