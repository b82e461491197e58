from simulator import RepoSim, load_all


def test_honest_repository_verifies() -> None:
    sim = RepoSim()
    sim.add_target("v1", b"hello")
    sim.delegate("targets/releases", ["rel/"])
    sim.add_target("rel/a", b"a", role="targets/releases")
    files = sim.publish()
    ts = load_all(files, sim.gun)
    got = ts.all_targets()
    assert set(got) == {"v1", "rel/a"}
    assert got["rel/a"].role == "targets/releases"
