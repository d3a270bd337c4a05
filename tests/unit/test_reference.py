"""The image reference grammar: distribution/reference's own table of examples, and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raybuild.errors import ConfigError
from raybuild.reference import DEFAULT_HOST, ImageRef, ReferenceError, is_loopback_host

HEX64 = "f" * 64
HEX128 = "f" * 128

# (text, host, path, tag, digest): the valid examples of distribution's reference tests, and docker's
# normalisation of a default host and the library/ namespace.
VALID = [
    ("test_com", DEFAULT_HOST, "library/test_com", None, None),
    ("test.com:tag", DEFAULT_HOST, "library/test.com", "tag", None),
    ("test.com:5000", DEFAULT_HOST, "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    (f"test:5000/repo@sha256:{HEX64}", "test:5000", "repo", None, f"sha256:{HEX64}"),
    (f"test:5000/repo:tag@sha256:{HEX64}", "test:5000", "repo", "tag", f"sha256:{HEX64}"),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("lowercase:Uppercase", DEFAULT_HOST, "library/lowercase", "Uppercase", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", None, None),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", "some-long-tag",
     None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app",
     "test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@sha512:{HEX128}", "xn--7o8h.com", "myimage", "xn--7o8h.com",
     f"sha512:{HEX128}"),
    ("foo_bar.com:8080", DEFAULT_HOST, "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", DEFAULT_HOST, "foo/foo_bar.com", "8080", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", None, None),
    ("192.168.1.1:5/repo", "192.168.1.1:5", "repo", None, None),
    ("a/a__b/c---d.e", DEFAULT_HOST, "a/a__b/c---d.e", None, None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", None, None),
    ("localhost/repo", "localhost", "repo", None, None),
    ("localhost:5000/repo:tag", "localhost:5000", "repo", "tag", None),
    ("Docker.io/foo", "Docker.io", "foo", None, None),  # an upper-case first component is a host
    ("docker.io/ubuntu", DEFAULT_HOST, "library/ubuntu", None, None),
    ("index.docker.io/team/app:1", DEFAULT_HOST, "team/app", "1", None),
    ("ubuntu:22.04", DEFAULT_HOST, "library/ubuntu", "22.04", None),
    ("127.0.0.1:5000/raybuild/hello:ray2.60.0-py3.11-cpu-0123abcd",
     "127.0.0.1:5000", "raybuild/hello", "ray2.60.0-py3.11-cpu-0123abcd", None),
]  # fmt: skip

INVALID = [
    "",
    ":justtag",
    f"@sha256:{HEX64}",
    "repo@sha256:ffffffffffffffffffffffffffffffffff",  # a sha256 digest is 64 hex digits
    f"validname@invaliddigest:{HEX64}x",
    "Uppercase:tag",
    "test:5000/Uppercase/lowercase:tag",
    "aa/asdf$$^/aa",
    "a" * 256,
    "foo//bar",
    "foo/-bar",
    "foo/bar-",
    "a/c-_-d",  # one separator at a time
    "foo/bar:",  # an empty tag
    "foo/bar:-tag",  # a tag starts with a word character
    "foo/bar:" + "a" * 129,
    "[fe80::1%eth0]:5000/repo",
    "[2001:db8::1]",
    "[2001:db8::1]:5000",
    "[2001:db8::1]:5000/",
    "2001:db8::1/repo",
    "test:5000/",
    "host:99999/repo",  # a port is at most 65535
    "host:0/repo",
    "http://host/repo",
    "-host.com/repo",
    "repo@sha256",
]


@pytest.mark.parametrize(("text", "host", "path", "tag", "digest"), VALID)
def test_valid_references(text: str, host: str, path: str, tag: str | None, digest: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.host, ref.path, ref.tag, ref.digest) == (host, path, tag, digest)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references(text: str) -> None:
    with pytest.raises(ReferenceError):
        ImageRef.parse(text)


def test_a_reference_error_is_a_config_error_with_one_short_line() -> None:
    with pytest.raises(ConfigError) as caught:
        ImageRef.parse("x" * 100_000 + ":Bad Tag")
    assert "\n" not in caught.value.message
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
        ("docker.io/team/app", "team/app"),
        ("raybuild/base-cpu:bookworm-1", "raybuild/base-cpu:bookworm-1"),
        (f"localhost:5000/a/b:t@sha256:{HEX64}", f"localhost:5000/a/b:t@sha256:{HEX64}"),
        ("index.docker.io/library/redis", "redis"),
    ],
)
def test_str_is_the_familiar_form(text: str, familiar: str) -> None:
    assert str(ImageRef.parse(text)) == familiar


def test_parts_and_new_references() -> None:
    ref = ImageRef.parse("127.0.0.1:5000/team/hello:v1")
    assert (ref.hostname, ref.port, ref.is_loopback) == ("127.0.0.1", 5000, True)
    assert ref.api_reference == "v1"
    pinned = ref.with_digest(f"sha256:{HEX64}")
    assert str(pinned) == f"127.0.0.1:5000/team/hello:v1@sha256:{HEX64}"
    assert str(pinned.pinned()) == f"127.0.0.1:5000/team/hello@sha256:{HEX64}"
    assert pinned.api_reference == f"sha256:{HEX64}"
    assert str(ImageRef.parse_name("127.0.0.1:5000/team").child("hello").with_tag("x")) == (
        "127.0.0.1:5000/team/hello:x"
    )
    assert ImageRef.parse("ubuntu").tag_or_latest == "latest"
    assert ImageRef.parse("[::1]:5000/repo").port == 5000
    assert ImageRef.parse("ghcr.io/org/app").port is None
    with pytest.raises(ReferenceError):
        ImageRef.parse_name("host/ns:tag")
    with pytest.raises(ReferenceError):
        ref.pinned()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1:5000", True), ("127.9.8.7", True), ("localhost", True), ("[::1]:5000", True),
     ("127.example.com", False), ("10.0.0.1:5000", False), ("ghcr.io", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


_component = st.from_regex(r"[a-z0-9]{1,6}((\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_host = st.one_of(
    st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){1,2}", fullmatch=True),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["localhost", "127.0.0.1", "reg.example"]),
              st.integers(1, 65535)),
)  # fmt: skip
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.builds(lambda h: f"sha256:{h}", st.from_regex(r"[0-9a-f]{64}", fullmatch=True))


@given(
    host=_host,
    path=st.lists(_component, min_size=1, max_size=3).map("/".join),
    tag=st.none() | _tag,
    digest=st.none() | _digest,
)
def test_parse_and_str_round_trip(host: str, path: str, tag: str | None, digest: str | None) -> None:
    text = f"{host}/{path}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = ImageRef.parse(text)
    assert (ref.host, ref.path, ref.tag, ref.digest) == (host, path, tag, digest)
    assert str(ref) == text
    assert ImageRef.parse(str(ref)) == ref


@given(text=st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_a_reference_error(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except ReferenceError:
        return
    assert ImageRef.parse(str(ref)) == ref


def test_digest_among_repo_digests_is_this_repositorys() -> None:
    digest = "sha256:" + "d" * 64
    ref = ImageRef.parse("127.0.0.1:5000/ns/app:v1")
    entries = [
        f"127.0.0.1:5000/ns/other@sha256:{'e' * 64}",
        "not a reference!",
        f"127.0.0.1:5000/ns/app@{digest}",
    ]
    assert ref.digest_among(entries) == digest
    assert ref.digest_among(entries[:2]) is None
    # A repository is matched whole: ns/app-measure is another repository.
    assert ref.digest_among([f"127.0.0.1:5000/ns/app-measure@{digest}"]) is None
    assert ImageRef.parse("ubuntu:22.04").digest_among([f"docker.io/library/ubuntu@{digest}"]) == digest


def test_is_bare_when_neither_tag_nor_digest() -> None:
    assert ImageRef.parse("127.0.0.1:5000/ns/app").is_bare
    assert not ImageRef.parse("127.0.0.1:5000/ns/app:v1").is_bare
    assert not ImageRef.parse(f"127.0.0.1:5000/ns/app@sha256:{'d' * 64}").is_bare
