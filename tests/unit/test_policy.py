"""Tests of the governance policy: loading, every kind of mistake with its precise message, merging, docs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from barecount_provider import config, policy
from barecount_provider.policy import (
    MISSING,
    NETWORK_PROFILES,
    RUNNER_CLASSES,
    SIZES,
    Policy,
    PolicyError,
    Problem,
    TenantPolicy,
    get_policy,
    load_policy,
    validate_file,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
BUILT_IN = Path(policy.__file__).parents[1] / "default_policy.yaml"
SETTINGS_KEYS = (
    "allowed_runner_classes, max_size, allowed_network_profiles, trace_sampling_ratio, "
    "debug_logs_in_production, limits, retry_budget, failure_classes, replay_approval, cost_budget, size_tables, network_profiles, runner_targets, declared_by"
)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that messages name the file as `policy.yaml`, as a user would pass it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "policy.yaml") -> str:
    Path(name).write_text(text, encoding="utf-8")
    return name


def messages(text: str) -> list[str]:
    return [str(problem) for problem in validate_file(write(text))]


# ------------------------------------------------------------------------------------------- the built-in


def test_built_in_policy_loads_and_validates() -> None:
    built_in = load_policy()
    assert built_in.source == "<built-in>"
    assert built_in.version == 1
    assert built_in.tenants == {}
    assert load_policy("") == built_in
    defaults = built_in.defaults
    assert defaults.allowed_runner_classes == RUNNER_CLASSES
    assert defaults.allowed_network_profiles == NETWORK_PROFILES
    assert defaults.max_size == "l"
    assert defaults.trace_sampling_ratio == 1.0
    assert defaults.debug_logs_in_production is False
    assert validate_file(str(BUILT_IN)) == []


def test_built_in_policy_sets_every_key_and_sizes_every_runner_class() -> None:
    defaults = yaml.safe_load(BUILT_IN.read_text())["defaults"]
    assert policy.incomplete_problems(defaults) == []
    del defaults["limits"]["max_hosts"]
    assert [str(p) for p in policy.incomplete_problems(defaults)] == [
        "<built-in>: defaults.limits.max_hosts: missing; expected every key set in the built-in defaults"
    ]
    built_in = load_policy().defaults
    assert built_in.resources("serverless", "m") == {
        "lambda": {"memory_mb": 1024, "ephemeral_storage_mb": 1024}
    }
    assert built_in.resources("container", "xs")["fargate"] == {"cpu": 256, "memory_mb": 512}
    assert built_in.resources("managed_etl", "l")["glue"] == {"worker_type": "G.2X", "number_of_workers": 20, "auto_scaling": False}
    assert built_in.resources("dedicated", "xl")["ec2"] == {"instance_type": "m5.12xlarge", "host_count": 4}
    for runner_class in policy.SIZED_RUNNER_CLASSES:
        assert set(built_in.size_tables[runner_class]) == set(SIZES)


def test_a_file_sets_only_what_it_changes() -> None:
    loaded = policy.parse_policy("version: 1\ndefaults:\n  max_size: s\n", "policy.yaml")
    assert loaded.source == "policy.yaml"
    assert loaded.defaults.max_size == "s"
    assert loaded.defaults.retry_budget == load_policy().defaults.retry_budget


# --------------------------------------------------------------------------------------------------- the docs


def _docs_block(heading: str, language: str, index: int = 0) -> str:
    """The index-th fenced block of `language` in the docs section under `heading`."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)
    return blocks[index]


def test_docs_full_example_loads_without_problems(in_tmp: Path) -> None:
    assert validate_file(write(_docs_block("A full example", "yaml"))) == []
    example = load_policy("policy.yaml")
    assert set(example.tenants) == {"acme", "globex", "initech"}
    acme, globex = example.for_tenant("acme"), example.for_tenant("globex")
    # what the docs say the example gives
    assert acme.allows_runner_class("dedicated") and acme.allows_size("xl")
    assert acme.trace_sampling_ratio == 1.0
    assert (acme.retry_budget.max_retries_per_task, acme.retry_budget.max_retries_per_run) == (4, 6)
    assert acme.resources("container", "m")["pod"] == {
        "cpu_request": "500m",
        "cpu_limit": "1",
        "memory_request": "2Gi",
        "memory_limit": "3Gi",
    }
    assert globex.allowed_sizes == ("xs", "s")
    assert globex.allowed_network_profiles == ("privatelink",)
    assert globex.cost_budget.monthly_usd is None
    assert globex.replay_approval.approvers == ("platform-oncall",)
    assert example.for_tenant("initech") == dataclasses.replace(example.defaults, tenant="initech")


def test_docs_code_sample_holds_for_the_full_example(in_tmp: Path) -> None:
    acme = policy.parse_policy(_docs_block("A full example", "yaml")).for_tenant("acme")
    assert acme.allows_runner_class("dedicated") is True
    assert acme.allows_size("xl") is True
    assert acme.allowed_sizes == ("xs", "s", "m", "l", "xl")
    assert acme.allows_debug_logs("production") is False
    assert acme.retry_budget.max_retries_per_task == 4
    assert acme.replay_approval.needs_approval(records=6_000_000, cost_usd=10.0) is True


def test_docs_built_in_default_is_the_shipped_file() -> None:
    assert yaml.safe_load(_docs_block("The built-in default", "yaml")) == yaml.safe_load(BUILT_IN.read_text())


def test_docs_error_messages_are_the_ones_given(in_tmp: Path) -> None:
    expected = _docs_block("Error messages", "text", 0).strip().splitlines()
    assert messages(_docs_block("Error messages", "yaml")) == expected


def test_docs_file_level_error_messages_are_the_ones_given(in_tmp: Path) -> None:
    expected = _docs_block("Error messages", "text", 1).strip().splitlines()
    given = [str(problem) for problem in validate_file("policy.yaml")]  # not written yet: missing
    for text in (
        "version: 1\ndefaults:\n  max_size: l: m\n",
        "",
        "- version\n- 1\n",
        "defaults: {}\n",
        "version: 2\n",
        "version: '1'\n",
    ):
        given += messages(text)
    assert given == expected


def test_docs_document_every_settings_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    undocumented = [key for key in policy.settings_key_paths() if f"`{key}`" not in text]
    assert undocumented == []


# ------------------------------------------------------------------------------------- mistakes about the file


def test_missing_file(in_tmp: Path) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy("absent.yaml")
    assert raised.value.problems == [
        Problem(
            "absent.yaml",
            "",
            policy.Unreadable("cannot be read: No such file or directory"),
            "a readable YAML policy file",
        )
    ]
    assert str(raised.value) == (
        "absent.yaml: cannot be read: No such file or directory; expected a readable YAML policy file"
    )


def test_directory_instead_of_file(in_tmp: Path) -> None:
    (in_tmp / "policies").mkdir()
    assert [str(problem) for problem in validate_file("policies")] == [
        "policies: cannot be read: Is a directory; expected a readable YAML policy file"
    ]


def test_file_not_utf8(in_tmp: Path) -> None:
    Path("policy.yaml").write_bytes(b"version: 1\ndefaults:\n  max_size: \xff\n")
    assert [str(problem) for problem in validate_file("policy.yaml")] == [
        "policy.yaml: is not UTF-8 text (byte 33); expected a UTF-8 YAML policy file"
    ]


def test_yaml_syntax_error_gives_line_and_column(in_tmp: Path) -> None:
    assert messages("version: 1\ntenants:\n  acme: {max_size: m\n") == [
        "policy.yaml: YAML syntax error at line 4, column 1: expected ',' or '}', but got '<stream end>' "
        "(while parsing a flow mapping); expected valid YAML"
    ]


def test_yaml_tags_that_build_objects_are_refused(in_tmp: Path) -> None:
    [message] = messages("version: !!python/object:os.system {}\n")
    assert message.startswith(
        "policy.yaml: YAML syntax error at line 1, column 10: could not determine a constructor"
    )


def test_empty_file(in_tmp: Path) -> None:
    assert messages("# nothing yet\n") == [
        "policy.yaml: the file is empty; expected a policy with at least `version: 1`"
    ]


def test_top_level_not_a_mapping(in_tmp: Path) -> None:
    assert messages("just a string\n") == [
        "policy.yaml: 'just a string' is not a mapping with the keys version, defaults, tenants"
    ]


def test_duplicate_key_gives_key_path_line_and_column(in_tmp: Path) -> None:
    assert messages("version: 1\ntenants:\n  acme:\n    max_size: m\n    max_size: s\n") == [
        "policy.yaml: tenants.acme.max_size: given again at line 5, column 5; expected each key once in a mapping"
    ]


def test_every_copy_of_a_key_given_twice_is_checked_with_its_line(in_tmp: Path) -> None:
    text = (
        "version: 1\n"
        "tenants:\n"
        "  globex:\n"
        "    max_size: xxl\n"  # the copy YAML drops: its mistake was not reported
        "    max_size: s\n"
        "  acme:\n"
        "    limits: {max_workers: 0}\n"
        "    trace_sampling_ratio: 0.5\n"
        "  acme:\n"
        "    limits: {max_hosts: -1}\n"
        "    max_size: huge\n"
    )
    assert messages(text) == [
        "policy.yaml: tenants.globex.max_size: given again at line 5, column 5; expected each key once in a mapping",
        "policy.yaml: tenants.acme: given again at line 9, column 3; expected each key once in a mapping",
        "policy.yaml: tenants.acme.limits.max_hosts (copy at line 9): -1 is not an integer >= 0",
        "policy.yaml: tenants.acme.max_size (copy at line 9): 'huge' is not one of xs, s, m, l, xl",
        "policy.yaml: tenants.globex.max_size (copy at line 4): 'xxl' is not one of xs, s, m, l, xl",
        "policy.yaml: tenants.acme.limits.max_workers (copy at line 6): 0 is not an integer >= 1",
    ]


def test_a_valid_key_given_twice_reports_only_the_duplicate(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  limits: {max_workers: 3}\n  limits: {max_workers: 4}\n") == [
        "policy.yaml: defaults.limits: given again at line 4, column 3; expected each key once in a mapping"
    ]


def test_yaml_merge_keys_are_not_duplicates(in_tmp: Path) -> None:
    text = "version: 1\ntenants:\n  acme: &base {max_size: m}\n  globex:\n    <<: *base\n    max_size: s\n"
    assert messages(text) == []
    assert load_policy("policy.yaml").for_tenant("globex").max_size == "s"


# -------------------------------------------------------------------------------------------------- version


def test_missing_version(in_tmp: Path) -> None:
    [problem] = validate_file(write("defaults: {max_size: m}\n"))
    assert problem == Problem("policy.yaml", "version", MISSING, "version: 1")
    assert str(problem) == "policy.yaml: version: missing; expected version: 1"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2", "policy.yaml: version: 2 is not a supported policy version (supported: 1)"),
        ("'1'", "policy.yaml: version: '1' is not an integer policy version (supported: 1)"),
        ("true", "policy.yaml: version: True is not an integer policy version (supported: 1)"),
        ("1.0", "policy.yaml: version: 1.0 is not an integer policy version (supported: 1)"),
    ],
    ids=["unsupported", "string", "bool", "float"],
)
def test_bad_version(in_tmp: Path, version: str, expected: str) -> None:
    assert messages(f"version: {version}\n") == [expected]


# ---------------------------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key(in_tmp: Path) -> None:
    assert messages("version: 1\ntenant: {}\n") == [
        "policy.yaml: tenant: 'tenant' is not a known key (allowed: version, defaults, tenants)"
    ]


def test_unknown_settings_key_in_defaults_and_tenant(in_tmp: Path) -> None:
    text = "version: 1\ndefaults:\n  max_sizes: l\ntenants:\n  acme:\n    tracing_ratio: 0.5\n"
    assert messages(text) == [
        f"policy.yaml: defaults.max_sizes: 'max_sizes' is not a known key (allowed: {SETTINGS_KEYS})",
        f"policy.yaml: tenants.acme.tracing_ratio: 'tracing_ratio' is not a known key (allowed: {SETTINGS_KEYS})",
    ]


@pytest.mark.parametrize(
    ("section", "key", "allowed"),
    [
        ("limits", "max_worker", "max_workers, max_hosts, max_parallel_tasks"),
        (
            "retry_budget",
            "max_retries",
            "max_retries_per_task, max_retries_per_run, max_retries_per_window, window_seconds, "
            "backoff_base_seconds, backoff_max_seconds, jitter, window_scope",
        ),
        (
            "replay_approval",
            "approver",
            "threshold_records, threshold_cost_usd, approvers, timeout_seconds, default",
        ),
        ("cost_budget", "budget", "monthly_usd, alert_at_fraction"),
    ],
)
def test_unknown_nested_key(in_tmp: Path, section: str, key: str, allowed: str) -> None:
    assert messages(f"version: 1\ndefaults:\n  {section}:\n    {key}: 1\n") == [
        f"policy.yaml: defaults.{section}.{key}: {key!r} is not a known key (allowed: {allowed})"
    ]


# ------------------------------------------------------------------------------------------------ wrong types

WRONG_TYPES = [
    (
        "trace_sampling_ratio: '0.5'",
        "defaults.trace_sampling_ratio: '0.5' is not a number between 0.0 and 1.0",
    ),
    ("trace_sampling_ratio: true", "defaults.trace_sampling_ratio: True is not a number between 0.0 and 1.0"),
    ("limits: {max_workers: true}", "defaults.limits.max_workers: True is not an integer >= 1"),
    ("limits: {max_workers: 2.5}", "defaults.limits.max_workers: 2.5 is not an integer >= 1"),
    ("limits: {max_hosts: null}", "defaults.limits.max_hosts: None is not an integer >= 0"),
    ("debug_logs_in_production: 1", "defaults.debug_logs_in_production: 1 is not true or false"),
    ("retry_budget: {jitter: 'yes'}", "defaults.retry_budget.jitter: 'yes' is not true or false"),
    (
        "allowed_runner_classes: container",
        "defaults.allowed_runner_classes: 'container' is not a list of runner classes",
    ),
    (
        "allowed_network_profiles: {vpn: true}",
        "defaults.allowed_network_profiles: {'vpn': True} is not a list of network profiles",
    ),
    ("limits: 10", "defaults.limits: 10 is not a mapping (keys: max_workers, max_hosts, max_parallel_tasks)"),
    (
        "cost_budget: [1000]",
        "defaults.cost_budget: [1000] is not a mapping (keys: monthly_usd, alert_at_fraction)",
    ),
    (
        "cost_budget: {monthly_usd: '1000'}",
        "defaults.cost_budget.monthly_usd: '1000' is not a number >= 0, or null",
    ),
]


@pytest.mark.parametrize(("setting", "expected"), WRONG_TYPES, ids=[row[0] for row in WRONG_TYPES])
def test_wrong_type(in_tmp: Path, setting: str, expected: str) -> None:
    assert messages(f"version: 1\ndefaults:\n  {setting}\n") == [f"policy.yaml: {expected}"]


def test_defaults_not_a_mapping(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults: [max_size]\n") == [
        f"policy.yaml: defaults: ['max_size'] is not a mapping (keys: {SETTINGS_KEYS})"
    ]


def test_tenants_not_a_mapping(in_tmp: Path) -> None:
    assert messages("version: 1\ntenants: [acme, globex]\n") == [
        "policy.yaml: tenants: ['acme', 'globex'] is not a mapping of tenant name -> settings"
    ]


# ----------------------------------------------------------------------------------------------- out of range

OUT_OF_RANGE = [
    ("trace_sampling_ratio: 1.5", "defaults.trace_sampling_ratio: 1.5 is not a number between 0.0 and 1.0"),
    ("trace_sampling_ratio: -0.1", "defaults.trace_sampling_ratio: -0.1 is not a number between 0.0 and 1.0"),
    ("trace_sampling_ratio: .nan", "defaults.trace_sampling_ratio: nan is not a number between 0.0 and 1.0"),
    ("limits: {max_hosts: -1}", "defaults.limits.max_hosts: -1 is not an integer >= 0"),
    ("limits: {max_parallel_tasks: 0}", "defaults.limits.max_parallel_tasks: 0 is not an integer >= 1"),
    (
        "retry_budget: {max_retries_per_run: -3}",
        "defaults.retry_budget.max_retries_per_run: -3 is not an integer >= 0",
    ),
    ("retry_budget: {window_seconds: 0}", "defaults.retry_budget.window_seconds: 0 is not an integer >= 1"),
    (
        "retry_budget: {backoff_base_seconds: -1}",
        "defaults.retry_budget.backoff_base_seconds: -1 is not a number >= 0",
    ),
    (
        "replay_approval: {threshold_records: -1}",
        "defaults.replay_approval.threshold_records: -1 is not an integer >= 0, or null",
    ),
    (
        "replay_approval: {timeout_seconds: 0}",
        "defaults.replay_approval.timeout_seconds: 0 is not an integer >= 1",
    ),
    (
        "cost_budget: {monthly_usd: .inf}",
        "defaults.cost_budget.monthly_usd: inf is not a number >= 0, or null",
    ),
    (
        "cost_budget: {alert_at_fraction: 80}",
        "defaults.cost_budget.alert_at_fraction: 80 is not a number between 0.0 and 1.0",
    ),
]


@pytest.mark.parametrize(("setting", "expected"), OUT_OF_RANGE, ids=[row[0] for row in OUT_OF_RANGE])
def test_out_of_range(in_tmp: Path, setting: str, expected: str) -> None:
    assert messages(f"version: 1\ndefaults:\n  {setting}\n") == [f"policy.yaml: {expected}"]


# ----------------------------------------------------------------------- unknown runner class, size, network


def test_unknown_runner_class(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  allowed_runner_classes: [container, gpu]\n") == [
        "policy.yaml: defaults.allowed_runner_classes[1]: 'gpu' is not one of "
        "serverless, container, managed_etl, dedicated, local"
    ]


def test_unknown_size(in_tmp: Path) -> None:
    [problem] = validate_file(write("version: 1\ntenants:\n  acme:\n    max_size: xxl\n"))
    assert problem == Problem("policy.yaml", "tenants.acme.max_size", "xxl", "one of xs, s, m, l, xl")
    assert str(problem) == "policy.yaml: tenants.acme.max_size: 'xxl' is not one of xs, s, m, l, xl"


def test_unknown_network_profile(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  allowed_network_profiles: [vpn, vpc]\n") == [
        "policy.yaml: defaults.allowed_network_profiles[1]: 'vpc' is not one of "
        "public, vpn, privatelink, private_vpc, on_prem"
    ]


# ------------------------------------------------------------------------------------------------ tenant names


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Acme", "'Acme'"),
        ("acme corp", "'acme corp'"),
        ("-acme", "'-acme'"),
        ("a" * 64, repr("a" * 64)),
        ("42", "42"),
    ],
    ids=["upper-case", "space", "leading-dash", "too-long", "integer"],
)
def test_bad_tenant_name(in_tmp: Path, name: str, shown: str) -> None:
    assert messages(f"version: 1\ntenants:\n  {name}: {{max_size: m}}\n") == [
        f"policy.yaml: tenants.{name}: {shown} is not a tenant name matching ^[a-z0-9][a-z0-9_-]{{0,62}}$"
    ]


@pytest.mark.parametrize("name", ["a", "acme", "acme-eu_1", "0day", "a" * 63])
def test_good_tenant_names(in_tmp: Path, name: str) -> None:
    assert messages(f"version: 1\ntenants:\n  {name}: {{max_size: m}}\n") == []


# --------------------------------------------------------------------------------------------- replay approval


def test_replay_default_not_reject_or_approve(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  replay_approval: {default: allow}\n") == [
        "policy.yaml: defaults.replay_approval.default: 'allow' is not one of reject, approve"
    ]


def test_approvers_not_a_list(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  replay_approval: {approvers: alice}\n") == [
        "policy.yaml: defaults.replay_approval.approvers: 'alice' is not a list of user names"
    ]


def test_approvers_not_strings(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  replay_approval: {approvers: [alice, 42, '', {bob: 1}]}\n") == [
        "policy.yaml: defaults.replay_approval.approvers[1]: 42 is not a user name (a non-empty string)",
        "policy.yaml: defaults.replay_approval.approvers[2]: '' is not a user name (a non-empty string)",
        "policy.yaml: defaults.replay_approval.approvers[3]: {'bob': 1} is not a user name (a non-empty string)",
    ]


# ------------------------------------------------------------------------------------------------ size tables


def test_size_table_for_unknown_runner_class(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  size_tables:\n    gpu: {}\n    local: {}\n") == [
        "policy.yaml: defaults.size_tables.gpu: 'gpu' is not a runner class with a size table: "
        "one of serverless, container, managed_etl, dedicated",
        "policy.yaml: defaults.size_tables.local: 'local' is not a runner class with a size table: "
        "one of serverless, container, managed_etl, dedicated",
    ]


def test_size_table_for_unknown_size(in_tmp: Path) -> None:
    assert messages("version: 1\ndefaults:\n  size_tables:\n    serverless:\n      xxl: {}\n") == [
        "policy.yaml: defaults.size_tables.serverless.xxl: 'xxl' is not a size: one of xs, s, m, l, xl"
    ]


def test_size_table_unknown_backend_and_setting(in_tmp: Path) -> None:
    text = "version: 1\ndefaults:\n  size_tables:\n    container:\n      m:\n        ecs: {}\n        pod: {cpu: 1}\n"
    assert messages(text) == [
        "policy.yaml: defaults.size_tables.container.m.ecs: 'ecs' is not a known key (allowed: pod, fargate)",
        "policy.yaml: defaults.size_tables.container.m.pod.cpu: 'cpu' is not a known key "
        "(allowed: cpu_request, cpu_limit, memory_request, memory_limit)",
    ]


SIZE_VALUES = [
    ("serverless", "lambda", "memory_mb: 64", "64 is not an integer between 128 and 10240"),
    ("serverless", "lambda", "ephemeral_storage_mb: '1GB'", "'1GB' is not an integer between 512 and 10240"),
    (
        "container",
        "pod",
        "cpu_request: 2 cores",
        "'2 cores' is not a Kubernetes CPU quantity such as '250m' or '2'",
    ),
    (
        "container",
        "pod",
        "memory_limit: 4GB",
        "'4GB' is not a Kubernetes memory quantity such as '512Mi' or '4Gi'",
    ),
    ("container", "fargate", "cpu: 300", "300 is not one of 256, 512, 1024, 2048, 4096, 8192, 16384"),
    (
        "managed_etl",
        "glue",
        "worker_type: G.3X",
        "'G.3X' is not one of G.025X, G.1X, G.2X, G.4X, G.8X, G.12X, G.16X, R.1X, R.2X, R.4X, R.8X",
    ),
    ("managed_etl", "glue", "number_of_workers: 0", "0 is not an integer >= 1"),
    ("managed_etl", "emr", "max_cpu: 400", "400 is not an EMR Serverless CPU such as '400 vCPU'"),
    (
        "managed_etl",
        "emr",
        "worker_memory: 16 GiB",
        "'16 GiB' is not an EMR Serverless memory such as '16 GB'",
    ),
    ("dedicated", "ec2", "instance_type: large", "'large' is not an EC2 instance type such as 'm5.large'"),
    ("dedicated", "ec2", "host_count: 0", "0 is not an integer >= 1"),
]


@pytest.mark.parametrize(
    ("runner_class", "backend", "setting", "expected"), SIZE_VALUES, ids=[row[2] for row in SIZE_VALUES]
)
def test_size_table_bad_value(
    in_tmp: Path, runner_class: str, backend: str, setting: str, expected: str
) -> None:
    key = setting.split(":")[0]
    text = f"version: 1\ndefaults:\n  size_tables:\n    {runner_class}:\n      m:\n        {backend}: {{{setting}}}\n"
    assert messages(text) == [
        f"policy.yaml: defaults.size_tables.{runner_class}.m.{backend}.{key}: {expected}"
    ]


# ------------------------------------------------------------------------------------------ rules across keys


def test_pod_limit_below_request(in_tmp: Path) -> None:
    text = (
        "version: 1\ndefaults:\n  size_tables:\n    container:\n      m:\n"
        "        pod: {cpu_request: '2', cpu_limit: 500m, memory_limit: 512Mi}\n"
    )
    assert messages(text) == [
        "policy.yaml: defaults.size_tables.container.m.pod.cpu_limit: '500m' is not a value >= cpu_request ('2')",
        "policy.yaml: defaults.size_tables.container.m.pod.memory_limit: '512Mi' is not a value >= "
        "memory_request ('1Gi')",
    ]


def test_backoff_max_below_base(in_tmp: Path) -> None:
    text = "version: 1\ndefaults:\n  retry_budget: {backoff_base_seconds: 60, backoff_max_seconds: 10}\n"
    assert messages(text) == [
        "policy.yaml: defaults.retry_budget.backoff_max_seconds: 10 is not a value >= backoff_base_seconds (60)"
    ]


def test_rule_across_keys_is_reported_where_the_tenant_breaks_it(in_tmp: Path) -> None:
    text = (
        "version: 1\ndefaults:\n  retry_budget: {backoff_max_seconds: 300}\n"
        "tenants:\n  acme:\n    retry_budget: {backoff_base_seconds: 600}\n  globex: {max_size: s}\n"
    )
    assert messages(text) == [
        "policy.yaml: tenants.acme.retry_budget.backoff_base_seconds: 600 is not a value <= "
        "backoff_max_seconds (300)"
    ]


def test_rule_broken_in_defaults_is_reported_once(in_tmp: Path) -> None:
    text = (
        "version: 1\ndefaults:\n  retry_budget: {backoff_base_seconds: 600, backoff_max_seconds: 300}\n"
        "tenants:\n  acme: {max_size: s}\n  globex: {max_size: m}\n"
    )
    assert messages(text) == [
        "policy.yaml: defaults.retry_budget.backoff_max_seconds: 300 is not a value >= backoff_base_seconds (600)"
    ]


# ------------------------------------------------------------------------------------- collecting every mistake


def test_every_mistake_is_collected_and_listed_one_per_line(in_tmp: Path) -> None:
    text = (
        "version: 3\ndefaults:\n  max_size: huge\n  trace_sampling_ratio: 2\n"
        "tenants:\n  ACME: {}\n  acme:\n    limits: {max_hosts: many}\n"
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(write(text))
    expected = [
        "policy.yaml: version: 3 is not a supported policy version (supported: 1)",
        "policy.yaml: defaults.max_size: 'huge' is not one of xs, s, m, l, xl",
        "policy.yaml: defaults.trace_sampling_ratio: 2 is not a number between 0.0 and 1.0",
        "policy.yaml: tenants.ACME: 'ACME' is not a tenant name matching ^[a-z0-9][a-z0-9_-]{0,62}$",
        "policy.yaml: tenants.acme.limits.max_hosts: 'many' is not an integer >= 0",
    ]
    assert [str(problem) for problem in raised.value.problems] == expected
    assert str(raised.value).splitlines() == expected
    assert isinstance(raised.value, ValueError)


def test_errors_name_the_file_as_configured(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "policy.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\ndefaults: {max_size: xxl}\n")
    [problem] = validate_file(str(path))
    assert problem.file == str(path)
    assert str(problem).startswith(f"{path}: defaults.max_size: ")


# ------------------------------------------------------------------------------------- never a silent fall-back


def test_invalid_configured_policy_raises_instead_of_falling_back(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "policy_path", lambda: write("version: 1\ndefaults: {max_size: xxl}\n"))
    get_policy.cache_clear()
    try:
        with pytest.raises(PolicyError, match=r"defaults\.max_size: 'xxl' is not one of"):
            get_policy()
    finally:
        get_policy.cache_clear()


def test_get_policy_is_cached_until_cache_clear(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "policy_path", lambda: "policy.yaml")
    write("version: 1\ndefaults: {max_size: s}\n")
    get_policy.cache_clear()
    try:
        first = get_policy()
        assert first.source == "policy.yaml" and first.defaults.max_size == "s"
        write("version: 1\ndefaults: {max_size: m}\n")
        assert get_policy() is first
        get_policy.cache_clear()
        assert get_policy().defaults.max_size == "m"
    finally:
        get_policy.cache_clear()


def test_empty_policy_path_is_the_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "policy_path", lambda: "")
    get_policy.cache_clear()
    try:
        assert get_policy().source == "<built-in>"
    finally:
        get_policy.cache_clear()


# --------------------------------------------------------------------------------------------------- for_tenant

MERGE_POLICY = """\
version: 1
defaults:
  allowed_runner_classes: [serverless, container]
  max_size: m
  trace_sampling_ratio: 0.5
  retry_budget: {max_retries_per_task: 2, max_retries_per_run: 5}
  replay_approval: {approvers: [oncall]}
  cost_budget: {monthly_usd: 1000}
  size_tables:
    container:
      m: {pod: {memory_limit: 4Gi}}
tenants:
  acme:
    allowed_runner_classes: [dedicated]
    max_size: xl
    retry_budget: {max_retries_per_task: 7}
    cost_budget: {monthly_usd: null}
    size_tables:
      container:
        m: {pod: {cpu_limit: "3"}}
  quiet:
"""


@pytest.fixture
def merged() -> Policy:
    return policy.parse_policy(MERGE_POLICY, "policy.yaml")


def test_for_tenant_plain_values_override(merged: Policy) -> None:
    acme = merged.for_tenant("acme")
    assert acme.tenant == "acme"
    assert acme.max_size == "xl"
    assert acme.trace_sampling_ratio == 0.5  # from defaults


def test_for_tenant_lists_replace(merged: Policy) -> None:
    assert merged.for_tenant("acme").allowed_runner_classes == ("dedicated",)
    assert merged.defaults.allowed_runner_classes == ("serverless", "container")


def test_for_tenant_mappings_merge_key_by_key(merged: Policy) -> None:
    retry = merged.for_tenant("acme").retry_budget
    assert (retry.max_retries_per_task, retry.max_retries_per_run) == (7, 5)  # tenant, defaults
    assert retry.window_seconds == 3600  # built-in
    assert merged.for_tenant("acme").replay_approval.approvers == ("oncall",)


def test_for_tenant_size_tables_merge_down_to_each_setting(merged: Policy) -> None:
    assert merged.for_tenant("acme").resources("container", "m")["pod"] == {
        "cpu_request": "500m",  # built-in
        "cpu_limit": "3",  # tenant
        "memory_request": "1Gi",  # built-in
        "memory_limit": "4Gi",  # defaults
    }


def test_for_tenant_null_overrides_a_nullable_value(merged: Policy) -> None:
    assert merged.defaults.cost_budget.monthly_usd == 1000.0
    assert merged.for_tenant("acme").cost_budget.monthly_usd is None


def test_declared_tenant_without_settings_gets_the_defaults(merged: Policy) -> None:
    assert merged.for_tenant("quiet") == dataclasses.replace(merged.defaults, tenant="quiet")


def test_unknown_tenant_gets_the_defaults_with_its_name(merged: Policy) -> None:
    unknown = merged.for_tenant("initech")
    assert unknown == dataclasses.replace(merged.defaults, tenant="initech")
    assert unknown.tenant == "initech"
    assert merged.defaults.tenant == policy.DEFAULTS_TENANT


def test_numbers_are_typed(merged: Policy) -> None:
    acme = merged.for_tenant("acme")
    assert isinstance(acme.retry_budget.backoff_base_seconds, float)
    assert isinstance(acme.replay_approval.threshold_cost_usd, float)
    assert isinstance(acme.limits.max_workers, int)


# ------------------------------------------------------------------------------------------ TenantPolicy queries


def test_allowed_sizes_go_up_to_max_size(merged: Policy) -> None:
    defaults = merged.defaults
    assert defaults.allowed_sizes == ("xs", "s", "m")
    assert defaults.allows_size("m") and not defaults.allows_size("l")
    assert not defaults.allows_size("huge")


def test_allows_runner_class_and_network_profile(merged: Policy) -> None:
    acme = merged.for_tenant("acme")
    assert acme.allows_runner_class("dedicated")
    assert not acme.allows_runner_class("container")
    assert acme.allows_network_profile("privatelink")


def test_debug_logs_are_governed_only_in_production(merged: Policy) -> None:
    defaults = merged.defaults
    assert defaults.allows_debug_logs("development") and defaults.allows_debug_logs("staging")
    assert not defaults.allows_debug_logs("production")
    assert dataclasses.replace(defaults, debug_logs_in_production=True).allows_debug_logs("production")


def test_resources_of_local_and_unknown(merged: Policy) -> None:
    assert merged.defaults.resources("local", "m") == {}
    with pytest.raises(ValueError, match=r"runner class 'gpu' is not one of serverless, container"):
        merged.defaults.resources("gpu", "m")
    with pytest.raises(ValueError, match=r"size 'xxl' is not one of xs, s, m, l, xl"):
        merged.defaults.resources("container", "xxl")


def test_replay_needs_approval_at_either_threshold() -> None:
    approval = load_policy().defaults.replay_approval
    assert not approval.needs_approval(records=10, cost_usd=1.0)
    assert approval.needs_approval(records=1_000_000, cost_usd=0.0)
    assert approval.needs_approval(records=0, cost_usd=100.0)
    never = dataclasses.replace(approval, threshold_records=None, threshold_cost_usd=None)
    assert not never.needs_approval(records=10**12, cost_usd=10.0**9)


def test_tenant_policy_is_immutable(merged: Policy) -> None:
    acme: TenantPolicy = merged.for_tenant("acme")
    with pytest.raises(dataclasses.FrozenInstanceError):
        acme.max_size = "xs"  # type: ignore[misc]
    with pytest.raises(TypeError):
        acme.size_tables["container"]["m"]["pod"]["cpu_limit"] = "9"  # type: ignore[index]
    assert hash(acme) == hash(merged.for_tenant("acme"))
