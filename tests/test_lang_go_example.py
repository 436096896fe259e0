# Test plan: examples/greeter, the Go example the README serves, builds and behaves as
# its .proto documents (copied to a temporary directory, so the repository stays clean).
# - SayHello: the language picks the greeting, `times` repeats it (int64), logged with
#   fields; empty name -> INVALID_ARGUMENT; times out of range -> OUT_OF_RANGE; an enum
#   value the build does not know -> INVALID_ARGUMENT naming it.
# - Summarize: count, oldest (nested message), average, role counts (map), mailing list
#   and unreachable members (oneof); a member without a name -> INVALID_ARGUMENT.
from __future__ import annotations

import shutil

import pytest

from lang_go_support import Guest, message_classes
from okra_core.build import build_project
from okra_core.package import load_package
from okra_core.status import StatusCode
from support import TESTS_DIR

pytestmark = pytest.mark.slow

EXAMPLE = TESTS_DIR.parent / "examples" / "greeter"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    project = tmp_path_factory.mktemp("example") / "greeter"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("dist", ".okra", "gen"))
    return load_package(build_project(project).path)


@pytest.fixture(scope="module")
def types(package):
    return message_classes(package.descriptor_set)


@pytest.fixture
def guest(package):
    guest = Guest(package, "greeter.v1.Greeter")
    yield guest
    guest.close()


def say_hello(guest, types, **fields):
    return guest.call("SayHello", types("greeter.v1.HelloRequest")(**fields).SerializeToString())


def test_say_hello_in_a_language_several_times(guest, types):
    reply = say_hello(guest, types, name="Ada", language=2, times=3)
    assert reply.code == 0, reply.message
    hello = types("greeter.v1.HelloReply").FromString(reply.output)
    assert hello.message == "Bonjour, Ada!"
    assert list(hello.greetings) == ["1. Bonjour, Ada!", "2. Bonjour, Ada!", "3. Bonjour, Ada!"]
    (record,) = guest.logs.records
    assert record.okra_fields == {"name": "Ada", "language": "LANGUAGE_FRENCH", "times": 3}


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"name": "  "}, StatusCode.INVALID_ARGUMENT, "name must not be empty"),
        ({"name": "Ada", "times": 11}, StatusCode.OUT_OF_RANGE, "times must be between 1 and 10, not 11"),
        ({"name": "Ada", "times": -(2**63)}, StatusCode.OUT_OF_RANGE, f"not {-(2**63)}"),
        ({"name": "Ada", "language": 42}, StatusCode.INVALID_ARGUMENT, "language 42 is not supported"),
    ],
)
def test_say_hello_refuses_bad_requests(guest, types, fields, code, message):
    reply = say_hello(guest, types, **fields)
    assert reply.code == code
    assert message in reply.message


def test_summarize_a_team(guest, types):
    Team, Person = types("greeter.v1.Team"), types("greeter.v1.Person")
    team = Team(name="core", members=[
        Person(name="Ada", age=36, role=1, contact={"email": "ada@example.com"}),
        Person(name="Grace", age=45, role=3, contact={"phone": "+1 555"}),
        Person(name="Linus", age=45, role=1),
    ])
    reply = guest.call("Summarize", team.SerializeToString())
    assert reply.code == 0, reply.message
    summary = types("greeter.v1.TeamSummary").FromString(reply.output)
    assert (summary.team, summary.member_count) == ("core", 3)
    assert summary.oldest == team.members[1]  # the first of the oldest
    assert summary.average_age == pytest.approx(42.0)
    assert dict(summary.role_counts) == {"engineer": 2, "manager": 1}
    assert list(summary.mailing_list) == ["Ada <ada@example.com>"]
    assert list(summary.unreachable) == ["Linus"]


def test_summarize_an_empty_team_has_no_oldest(guest, types):
    reply = guest.call("Summarize", types("greeter.v1.Team")(name="new").SerializeToString())
    summary = types("greeter.v1.TeamSummary").FromString(reply.output)
    assert not summary.HasField("oldest") and summary.member_count == 0


def test_summarize_refuses_a_nameless_member(guest, types):
    team = types("greeter.v1.Team")(name="core", members=[{"name": "Ada"}, {"age": 3}])
    reply = guest.call("Summarize", team.SerializeToString())
    assert (reply.code, reply.message) == (StatusCode.INVALID_ARGUMENT, "member 2 of team core has no name")
