"""The upgrade pull delta: new layers of each app against what a node that ran the baseline holds."""

from __future__ import annotations

from raybuild.verify.pulldelta import markdown, pull_delta, pull_deltas
from raybuild.verify.results import AppResult, Layer, Measurement, Size, Startup

MB = 1_000_000
BASE = Layer(digest="sha256:base", size=80 * MB, compressed=30 * MB, created_by="debootstrap")
RAY = Layer(digest="sha256:ray", size=250 * MB, compressed=90 * MB, created_by="COPY /out/ray /opt/ray")


def layer(name: str, compressed: int | None) -> Layer:
    return Layer(digest=f"sha256:{name}", size=3 * (compressed or 1), compressed=compressed,
                 created_by=f"COPY {name} /opt/app")  # fmt: skip


def image(*layers: Layer, compression: str | None = None) -> AppResult:
    size = Size(
        uncompressed=sum(x.size for x in layers),
        compressed=sum(x.compressed or 0 for x in layers),
        layers=list(layers),
        largest_packages=[],
        shared_bytes=0,
        dive=None,
        prune_saved={},
        compression=compression,
    )
    startup = Startup(t_head=None, t_worker=None, t_serve=None, t_pull=None, t_cold=None)
    return AppResult(image="r/x:t", device="cpu", size=size, startup=startup)


def doc(**apps: AppResult) -> Measurement:
    return Measurement.now(ray_version="2.60.0", python="3.11", runs=0, apps=apps)


def test_a_code_only_change_costs_its_code_layer() -> None:
    before = image(BASE, RAY, layer("deps", 5 * MB), layer("code-1", 20_000))
    after = image(BASE, RAY, layer("deps", 5 * MB), layer("code-2", 21_000))
    delta = pull_delta("hello", after, [before], "changed")
    assert delta.download == 21_000 and [x.digest for x in delta.layers] == ["sha256:code-2"]
    assert delta.total == after.size.compressed and delta.status == "changed"


def test_a_dependency_bump_of_one_app_leaves_the_ray_layer_and_the_other_app_alone() -> None:
    baseline = doc(a=image(BASE, RAY, layer("a-deps-1", 5 * MB), layer("a-code", 1000)),
                   b=image(BASE, RAY, layer("b-deps", 7 * MB), layer("b-code", 1000)))  # fmt: skip
    current = doc(a=image(BASE, RAY, layer("a-deps-2", 6 * MB), layer("a-code", 1000)),
                  b=image(BASE, RAY, layer("b-deps", 7 * MB), layer("b-code", 1000)))  # fmt: skip
    a, b = pull_deltas(baseline, current)
    assert (a.app, a.download, [x.digest for x in a.layers]) == ("a", 6 * MB, ["sha256:a-deps-2"])
    assert (b.status, b.download, b.layers) == ("unchanged", 0, ())


def test_a_new_app_is_compared_with_every_baseline_image() -> None:
    (new,) = pull_deltas(doc(a=image(BASE, RAY)), doc(c=image(BASE, RAY, layer("c", 2 * MB))))
    assert (new.status, new.download) == ("new", 2 * MB)


def test_another_compression_means_every_layer_again() -> None:
    before = image(BASE, RAY, compression="gzip")
    delta = pull_delta("a", image(BASE, RAY, compression="zstd level 19"), [before], "changed")
    assert delta.recompressed and delta.download == 120 * MB
    # A document from before compression was recorded is gzip.
    assert not pull_delta("a", image(BASE, RAY, compression="gzip"), [image(BASE, RAY)], "changed").layers


def test_unknown_sizes_are_counted_apart() -> None:
    delta = pull_delta("a", image(BASE, layer("x", None)), [image(BASE)], "changed")
    assert (delta.download, delta.unknown) == (0, 1)
    assert "(+ unknown)" in "\n".join(markdown((delta,)))


def test_markdown_names_the_app_the_bytes_and_the_largest_new_layer() -> None:
    deltas = pull_deltas(doc(a=image(BASE, RAY, layer("code-1", 20_000))),
                         doc(a=image(BASE, RAY, layer("code-2", 2 * MB))))  # fmt: skip
    text = "\n".join(markdown(deltas))
    assert "### Upgrade pull delta" in text
    assert "| a | 2.0 MB | 1 | 2.0 MB `COPY code-2 /opt/app` | 122.0 MB |" in text
    assert markdown(()) == []
