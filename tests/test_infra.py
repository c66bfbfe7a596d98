"""The SAM template in infra/: cfn-lint clean, secure by construction, in step with the Dockerfile.

No AWS account here, so these tests check what a template can promise: lint, security properties
read from the parsed template (CloudFormation's short-form tags understood), both deployment
modes resolved from their conditions, and SAM's own transform of it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "infra" / "template.yaml"
DOCKERFILE = REPO / "Dockerfile"

# Peak RSS of the query process, DESIGN.md ("full model after one text and one image query").
MEASURED_PEAK_RSS_MB = 854
API_GATEWAY_TIMEOUT_S = 29
CONTRACT_HANDLER = "server.handler.handler"
TLS12_POLICIES = {
    "Policy-Min-TLS-1-2-2019-07",
    "Policy-Min-TLS-1-2-PFS-2023-10",
    "Policy-Min-TLS-1-2-RFC9151-FIPS-2024-08",
}


# ----------------------------------------------------------------------------- template loading
class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms: !Ref X -> {"Ref": X}, !Sub s -> {"Fn::Sub": s}."""


def _construct_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)  # !GetAtt A.B is ["A", "B"]
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def walk(node: Any) -> Iterator[Any]:
    """Every dict, list and scalar in a parsed template, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def branches(value: Any) -> list[Any]:
    """The values an `Fn::If` may take (both branches), or the value itself."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return [v for v in (yes, no) if v != {"Ref": "AWS::NoValue"}]
    return [value]


# ----------------------------------------------------------------------------- policy checks
def policy_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IAM statement in the template: role policies, bucket policies, domain policies."""
    found = []
    for node in walk(template):
        if isinstance(node, dict) and "Statement" in node and "Version" in node:
            found.extend(s for stmt in as_list(node["Statement"]) for s in branches(stmt))
    return found


def principals(stmt: dict[str, Any]) -> list[Any]:
    principal = stmt.get("Principal")
    if principal is None:
        return []
    if principal == "*":
        return ["*"]
    return [p for v in principal.values() for item in as_list(v) for p in branches(item)]


def wildcard_problems(stmts: list[dict[str, Any]]) -> list[str]:
    """What grants too much. Deny statements may say "*": they only take access away."""
    problems = []
    for stmt in stmts:
        if stmt.get("Effect") != "Allow":
            continue
        if "NotAction" in stmt or "NotPrincipal" in stmt or "NotResource" in stmt:
            problems.append(f"Not* element in an Allow: {stmt}")
        for action in as_list(stmt.get("Action", [])):
            if not isinstance(action, str) or action == "*" or action.endswith(":*") or "*" in action:
                problems.append(f"wildcard action {action!r}")
        for principal in principals(stmt):
            if principal == "*" or (isinstance(principal, str) and "*" in principal):
                problems.append(f"wildcard principal {principal!r}")
        for resource in as_list(stmt.get("Resource", [])):
            if resource == "*":
                problems.append("Resource '*' in an Allow")
    return problems


def test_wildcard_checker_catches_what_it_should():
    bad = [
        {"Effect": "Allow", "Principal": "*", "Action": "es:ESHttpGet", "Resource": "arn:x"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:role/r"}, "Action": "es:*", "Resource": "arn:x"},
        {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"], "Resource": "arn:x"},
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Allow", "NotAction": "iam:PassRole", "Resource": "arn:x"},
    ]
    problems = wildcard_problems(bad)
    assert any("principal '*'" in p for p in problems)
    assert any("'es:*'" in p for p in problems)
    assert any("Resource '*'" in p for p in problems)
    assert any("Not*" in p for p in problems)
    assert len(problems) >= 6
    deny_only = [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "arn:x"}]
    assert wildcard_problems(deny_only) == []


# ----------------------------------------------------------------------------- condition resolution
def param_defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {name: p.get("Default") for name, p in template["Parameters"].items()}


def evaluate(cond: Any, template: dict[str, Any], params: dict[str, Any]) -> Any:
    """Enough of CloudFormation's condition language to resolve this template's conditions."""
    if isinstance(cond, dict):
        if "Ref" in cond:
            return str(params[cond["Ref"]])
        if "Condition" in cond:
            return evaluate(template["Conditions"][cond["Condition"]], template, params)
        if "Fn::Equals" in cond:
            a, b = (evaluate(x, template, params) for x in cond["Fn::Equals"])
            return str(a) == str(b)
        if "Fn::Not" in cond:
            return not evaluate(cond["Fn::Not"][0], template, params)
        if "Fn::And" in cond:
            return all(evaluate(x, template, params) for x in cond["Fn::And"])
        if "Fn::Or" in cond:
            return any(evaluate(x, template, params) for x in cond["Fn::Or"])
        raise AssertionError(f"condition function not understood: {cond}")
    return cond


def resources_in_mode(template: dict[str, Any], **overrides: Any) -> set[str]:
    params = {**param_defaults(template), **overrides}
    conds = {name: evaluate(c, template, params) for name, c in template["Conditions"].items()}
    return {name for name, res in template["Resources"].items() if conds.get(res.get("Condition"), True)}


# ----------------------------------------------------------------------------- lint
def test_cfn_lint_passes_with_no_findings():
    result = subprocess.run(
        # The cfn-lint console script's entry point, with this interpreter (no PATH lookup).
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())",
         "--include-checks", "I", "--", str(TEMPLATE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_transform_wires_api_to_the_live_alias(monkeypatch):
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:  # the template names no managed policies; never ask IAM
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    out = transform(json.loads(json.dumps(load_template())), {}, NoManagedPolicies())
    res = out["Resources"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in res.values():
        by_type.setdefault(r["Type"], []).append(r)
    assert len(by_type["AWS::Lambda::Function"]) == 1
    alias = by_type["AWS::Lambda::Alias"][0]["Properties"]
    assert alias["Name"] == "live"
    assert alias["ProvisionedConcurrencyConfig"]["Fn::If"][0] == "HasProvisionedConcurrency"
    perms = by_type["AWS::Lambda::Permission"]
    arns = sorted(p["Properties"]["SourceArn"]["Fn::Sub"][0].rsplit("/", 2)[-2] for p in perms)
    assert arns == ["OPTIONS", "POST"]
    assert all(p["Properties"]["FunctionName"] == {"Ref": "SearchFunctionAliaslive"} for p in perms)
    body = by_type["AWS::ApiGateway::RestApi"][0]["Properties"]["Body"]
    uri = body["paths"]["/search"]["post"]["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
    assert "${SearchFunctionAliaslive}" in uri
    assert body["x-amazon-apigateway-binary-media-types"] == ["image/jpeg", "image/png", "image/webp", "image/gif"]
    assert by_type["AWS::ApiGateway::Stage"][0]["Properties"]["MethodSettings"][0]["ThrottlingRateLimit"] == {
        "Ref": "ThrottleRateLimit"
    }


# ----------------------------------------------------------------------------- security
def test_no_wildcard_actions_or_principals_anywhere(template):
    stmts = policy_statements(template)
    assert len(stmts) >= 10, "the walker found too few statements to be looking in the right place"
    assert wildcard_problems(stmts) == []


def test_deny_statements_only_tighten(template):
    for stmt in policy_statements(template):
        if stmt["Effect"] == "Deny":
            assert stmt.get("Condition"), f"an unconditional Deny would lock everyone out: {stmt}"


def test_no_secrets_in_parameter_defaults(template):
    secretish = re.compile(r"pass(word)?|secret|token|key|credential", re.I)
    for name, p in template["Parameters"].items():
        if secretish.search(name) and p.get("Default") not in (None, ""):
            # An enumeration (e.g. EnableApiKey true/false) cannot hold a secret.
            assert "AllowedValues" in p, f"{name} looks secret and has a default"
    text = TEMPLATE.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id in the template"
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not [k for k in env if secretish.search(k)], "secrets belong in the role, not in env vars"


def test_opensearch_domain_encrypted_and_https_only(template):
    domain = template["Resources"]["SearchDomain"]
    assert domain["Type"] == "AWS::OpenSearchService::Domain"
    assert domain["Condition"] == "IsOpenSearch"
    props = domain["Properties"]
    assert props["EncryptionAtRestOptions"]["Enabled"] is True
    assert props["NodeToNodeEncryptionOptions"]["Enabled"] is True
    assert props["DomainEndpointOptions"]["EnforceHTTPS"] is True
    assert props["DomainEndpointOptions"]["TLSSecurityPolicy"] in TLS12_POLICIES
    assert props["EBSOptions"]["EBSEnabled"] is True
    for key, param in (("InstanceType", "InstanceType"), ("InstanceCount", "InstanceCount")):
        assert props["ClusterConfig"][key] == {"Ref": param}
    assert props["EBSOptions"]["VolumeSize"] == {"Ref": "VolumeSize"}


def test_engine_version_is_opensearch_2_19_or_later(template):
    param = template["Parameters"]["EngineVersion"]
    assert template["Resources"]["SearchDomain"]["Properties"]["EngineVersion"] == {"Ref": "EngineVersion"}
    for version in param["AllowedValues"] + [param["Default"]]:
        engine, number = version.split("_")
        assert engine == "OpenSearch"
        assert tuple(int(x) for x in number.split(".")) >= (2, 19), version


def _domain_grants(template: dict[str, Any], role: str) -> dict[str, list[str]]:
    """action -> resource patterns the domain's access policy gives `role`."""
    grants: dict[str, list[str]] = {}
    for stmt in template["Resources"]["SearchDomain"]["Properties"]["AccessPolicies"]["Statement"]:
        if stmt["Principal"] == {"AWS": {"Fn::GetAtt": [role, "Arn"]}}:
            assert stmt["Effect"] == "Allow"
            for action in as_list(stmt["Action"]):
                grants.setdefault(action, []).extend(r["Fn::Sub"] for r in as_list(stmt["Resource"]))
    return grants


def test_domain_policy_lets_the_function_only_read_and_search(template):
    grants = _domain_grants(template, "SearchFunctionRole")
    assert set(grants) == {"es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost"}
    # POST is how _search is sent, but POST also writes (_doc, _bulk, _update): only search paths.
    assert grants["es:ESHttpPost"]
    assert all(r.endswith(("/_search", "/_count")) for r in grants["es:ESHttpPost"])
    for action, resources in grants.items():
        for r in resources:
            assert "/${DomainName}/" in r and "${OpenSearchIndex}" in r, (action, r)


def test_domain_policy_lets_the_ingest_role_write(template):
    grants = _domain_grants(template, "IngestRole")
    assert {"es:ESHttpPut", "es:ESHttpPost", "es:ESHttpDelete", "es:ESHttpGet"} <= set(grants)
    assert any(r.endswith("/${OpenSearchIndex}*") for r in grants["es:ESHttpPut"])
    principals_seen = {
        json.dumps(s["Principal"], sort_keys=True)
        for s in template["Resources"]["SearchDomain"]["Properties"]["AccessPolicies"]["Statement"]
    }
    assert len(principals_seen) == 2, "only the function role and the ingest role"


def domain_path_checker(template: dict[str, Any], role: str, alias: str):
    """(method, path) -> whether the domain's access policy lets `role` send it, matched the way
    Amazon OpenSearch Service authorises a request: by its URL, as resource
    `domain/{name}/{path}` (developer guide, "Identity and Access Management in Amazon OpenSearch
    Service"; `*` in a policy's resource matches any characters). tests/test_opensearch.py feeds
    it every request the backend sent."""
    grants = _domain_grants(template, role)
    compiled = {action: [re.compile(re.escape(r.split("/${DomainName}/", 1)[1].replace("${OpenSearchIndex}", alias))
                                    .replace(r"\*", ".*") + "$") for r in resources]
                for action, resources in grants.items()}

    def allowed(method: str, path: str) -> bool:
        from urllib.parse import unquote

        resource = unquote(path.split("?", 1)[0]).lstrip("/")
        return any(p.match(resource) for p in compiled.get(f"es:ESHttp{method.title()}", []))

    return allowed


def test_path_checker_matches_by_url():
    template = load_template()
    ingest = domain_path_checker(template, "IngestRole", "photos")
    assert ingest("POST", "/photos-m-8-20260101000000000/_bulk")
    assert not ingest("POST", "/_bulk") and not ingest("POST", "/_aliases") and not ingest("POST", "/other/_bulk")
    assert ingest("PUT", "/photos-m-8-1/_alias/photos") and not ingest("PUT", "/other/_alias/photos")
    search = domain_path_checker(template, "SearchFunctionRole", "photos")
    assert search("POST", "/photos-x/_search") and not search("POST", "/photos-x/_bulk")
    assert not search("PUT", "/photos-x")


def test_every_opensearch_grant_names_the_alias_prefix(template):
    """No domain-wide path (/_bulk, /_aliases, /_cluster/health): Amazon OpenSearch Service
    authorises by URL, and those URLs do not say which index a request touches."""
    for role in ("SearchFunctionRole", "IngestRole"):
        for action, resources in _domain_grants(template, role).items():
            for r in resources:
                assert r.endswith(("/${OpenSearchIndex}*", "/${OpenSearchIndex}*/_search")), (role, action, r)
    role_policies = [doc for name in ("SearchFunctionRole", "IngestRole")
                     for p in template["Resources"][name]["Properties"]["Policies"] for doc in branches(p)]
    es = [r for doc in role_policies for stmt in doc["PolicyDocument"]["Statement"]
          if str(stmt["Action"]).startswith(("es:", "['es:")) for r in as_list(stmt["Resource"])]
    assert es and all(r["Fn::Sub"].endswith(("/${OpenSearchIndex}*", "/${OpenSearchIndex}*/_search")) for r in es)


def test_domain_refuses_indexes_named_in_request_bodies(template):
    """With rest.action.multi.allow_explicit_index left true, a bulk body could write an index its
    URL does not name, past a URL-based policy (developer guide, "Advanced options and API
    considerations")."""
    options = template["Resources"]["SearchDomain"]["Properties"]["AdvancedOptions"]
    assert options == {"rest.action.multi.allow_explicit_index": "false"}


@pytest.mark.parametrize("instance, ok", [
    ("r7g.large.search", True), ("r6g.xlarge.search", True), ("r6gd.16xlarge.search", True),
    ("m5.2xlarge.search", True), ("c6g.large.search", True), ("im4gn.large.search", True),
    ("or1.large.search", True), ("r4.large.search", True), ("t3.small.search", True),
    # No encryption at rest ("The R3 instance types do not support encryption of data at rest").
    ("r3.large.search", False), ("r3.8xlarge.search", False),
    # Previous generation, their restrictions unread: refused rather than assumed.
    ("m3.large.search", False), ("i2.xlarge.search", False), ("t2.small.search", False),
    ("i3.large.search", False),  # instance storage only: this template attaches EBS volumes
    ("r7g.large", False), ("r7g.large.search.x", False),
])
def test_instance_types_are_ones_that_encrypt_at_rest(template, instance, ok):
    pattern = template["Parameters"]["InstanceType"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, instance)) is ok
    assert re.fullmatch(pattern, template["Parameters"]["InstanceType"]["Default"])


def test_index_bucket_private_encrypted_versioned_tls_only(template):
    bucket = template["Resources"]["IndexBucket"]
    assert bucket["Condition"] == "IsEmbedded"
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    policy = template["Resources"]["IndexBucketPolicy"]
    assert policy["Properties"]["Bucket"] == {"Ref": "IndexBucket"}
    tls = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
           if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert tls, "no Deny on aws:SecureTransport=false"


def test_function_reads_only_its_index_prefix(template):
    role = template["Resources"]["SearchFunctionRole"]["Properties"]
    s3_stmts = [s for p in role["Policies"] for doc in branches(p)
                for s in doc["PolicyDocument"]["Statement"] if str(s["Action"]).startswith("s3:")]
    actions = sorted(a for s in s3_stmts for a in as_list(s["Action"]))
    assert actions == ["s3:GetObject", "s3:ListBucket"]
    for s in s3_stmts:
        if s["Action"] == "s3:GetObject":
            assert s["Resource"] == {"Fn::Sub": "${IndexBucket.Arn}/${IndexPrefix}/*"}
        else:
            assert s["Resource"] == {"Fn::GetAtt": ["IndexBucket", "Arn"]}
            prefixes = s["Condition"]["StringLike"]["s3:prefix"]
            assert all(p["Fn::Sub"].startswith("${IndexPrefix}/") for p in prefixes)


def test_ingest_role_trusts_no_wildcard(template):
    trust = template["Resources"]["IngestRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    for stmt in trust:
        for p in principals(stmt):
            assert p != "*" and (not isinstance(p, str) or "*" not in p)


# ----------------------------------------------------------------------------- function and API
def test_function_is_the_container_image_with_the_contract_handler(template):
    fn = template["Resources"]["SearchFunction"]["Properties"]
    assert fn["PackageType"] == "Image"
    assert fn["ImageUri"] == {"Ref": "ImageUri"}
    assert not {"Handler", "Runtime", "CodeUri", "InlineCode"} & set(fn)
    assert fn["ImageConfig"]["Command"] == [CONTRACT_HANDLER]
    handler_module = REPO / "server" / "handler.py"
    if handler_module.exists():
        assert re.search(r"^def handler\(", handler_module.read_text(), re.M)


def test_image_uri_parameter_accepts_only_pinned_ecr_images(template):
    pattern = re.compile(template["Parameters"]["ImageUri"]["AllowedPattern"])
    good = ["123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch:1a2b3c4",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/clipsearch@sha256:" + "ab" * 32]
    bad = ["clipsearch:latest", "docker.io/library/python:3.11",
           "123456789012.dkr.ecr.eu-west-1.amazonaws.com/clipsearch"]
    assert all(pattern.fullmatch(u) for u in good)
    assert not any(pattern.fullmatch(u) for u in bad)


def dockerfile_cmd(text: str) -> list[str]:
    """The last CMD of a Dockerfile, exec form or shell form, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    cmds = [line.strip()[3:].strip() for line in joined.splitlines() if re.match(r"\s*CMD\s", line, re.I)]
    assert cmds, "the Dockerfile has no CMD"
    last = cmds[-1]
    return json.loads(last) if last.startswith("[") else last.split()


def dockerfile_problems(text: str, template: dict[str, Any]) -> list[str]:
    """Where a Dockerfile disagrees with the template's function, or carries credentials."""
    fn = template["Resources"]["SearchFunction"]["Properties"]
    problems = []
    if dockerfile_cmd(text) != fn["ImageConfig"]["Command"]:
        problems.append(f"CMD {dockerfile_cmd(text)} != ImageConfig.Command {fn['ImageConfig']['Command']}")
    arch = template["Globals"]["Function"]["Architectures"]
    froms = [line for line in text.splitlines() if re.match(r"\s*FROM\s", line, re.I)]
    if arch == ["x86_64"] and any(re.search(r"arm64|aarch64", line) for line in froms):
        problems.append("an arm64 base image for an x86_64 function")
    if re.search(r"^\s*(ARG|ENV)\s+AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)", text, re.M | re.I):
        problems.append("AWS credentials in a build arg or ENV")
    return problems


def test_dockerfile_checks_catch_mismatches(template):
    good = 'FROM public.ecr.aws/lambda/python:3.12\nCMD [ "server.handler.handler" ]\n'
    assert dockerfile_problems(good, template) == []
    assert dockerfile_cmd("FROM x\nCMD a.b \\\n  c\nCMD server.handler.handler\n") == ["server.handler.handler"]
    bad = 'FROM public.ecr.aws/lambda/python:3.12-arm64\nARG AWS_SECRET_ACCESS_KEY\nCMD ["app.handler"]\n'
    assert len(dockerfile_problems(bad, template)) == 3


@pytest.mark.skipif(not DOCKERFILE.exists(), reason="no Dockerfile on this branch yet: the contract CMD is checked above")
def test_dockerfile_matches_the_template(template):
    assert dockerfile_problems(DOCKERFILE.read_text(), template) == []


def test_timeout_under_api_gateway_limit(template):
    timeout = template["Globals"]["Function"]["Timeout"]
    assert timeout < API_GATEWAY_TIMEOUT_S
    assert timeout >= 10, "too short for a cold start with torch"
    body = template["Resources"]["SearchApi"]["Properties"]["DefinitionBody"]
    assert body["paths"]["/search"]["post"]["x-amazon-apigateway-integration"]["timeoutInMillis"] <= 29_000


def benchmarked_server_rss_mb(results_dir: Path = REPO / "bench" / "results") -> list[float]:
    """Peak-RSS figures (MB) in the query service's benchmark results, when `make bench` has run."""
    figures = []
    for path in results_dir.glob("*server*.json"):
        for node in walk(json.loads(path.read_text())):
            if isinstance(node, dict):
                figures += [float(v) for k, v in node.items()
                            if re.search(r"rss.*mb", str(k), re.I) and isinstance(v, (int, float))]
    return figures


def test_memory_covers_measured_peak_rss(template):
    param = template["Parameters"]["MemorySize"]
    assert template["Resources"]["SearchFunction"]["Properties"]["MemorySize"] == {"Ref": "MemorySize"}
    peak = max([MEASURED_PEAK_RSS_MB, *benchmarked_server_rss_mb()])
    assert param["MinValue"] >= peak * 1.15, f"floor {param['MinValue']} MB leaves no margin over {peak} MB"
    assert param["Default"] >= param["MinValue"]


def test_benchmark_rss_reader(tmp_path):
    (tmp_path / "server.json").write_text(json.dumps({"cold": {"peak_rss_mb": 612.5}, "warm": {"rss_mb": 700}}))
    (tmp_path / "ingest.json").write_text(json.dumps({"peak_rss_mb": 9000}))
    assert sorted(benchmarked_server_rss_mb(tmp_path)) == [612.5, 700.0]


def test_environment_matches_config_names(template):
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    expected = {"BACKEND", "INDEX_PATH", "OPENSEARCH_URL", "OPENSEARCH_INDEX", "OPENSEARCH_AUTH",
                "OPENSEARCH_SERVICE", "MODEL_ID", "ENCODER", "PRELOAD_IMAGE_TOWER", "HF_HUB_OFFLINE"}
    assert expected <= set(env)
    assert env["OPENSEARCH_AUTH"] == "sigv4" and env["OPENSEARCH_SERVICE"] == "es"
    assert env["HF_HUB_OFFLINE"] == "1"
    config_src = (REPO / "clipsearch" / "config.py").read_text()
    for name in set(env) - {"HF_HUB_OFFLINE"}:  # HF_HUB_OFFLINE is read by huggingface_hub itself
        assert f'"{name}"' in config_src, f"{name} is not read by clipsearch/config.py"


def test_config_reads_the_deployment_settings():
    from clipsearch.config import Settings

    s = Settings.from_env({"INDEX_S3_URI": "s3://b/index", "CORS_ALLOW_ORIGINS": "https://a.example, http://localhost:8501,"})
    assert s.index.s3_uri == "s3://b/index"
    assert s.server.cors_allow_origins == ("https://a.example", "http://localhost:8501")
    assert Settings.from_env({}).server.cors_allow_origins == () and Settings.from_env({}).index.s3_uri is None


def test_cors_origins_configured_never_star(template):
    param = template["Parameters"]["AllowedOrigins"]
    assert "*" not in param["Default"]
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch(param["Default"])
    assert pattern.fullmatch("https://a.example.com,http://localhost:8501")
    for bad in ("*", "https://*.example.com", "https://a.com,*", ""):
        assert not pattern.fullmatch(bad), bad
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["CORS_ALLOW_ORIGINS"] == {"Ref": "AllowedOrigins"}
    assert "Cors" not in template["Resources"]["SearchApi"]["Properties"]


def test_api_is_regional_throttled_with_optional_key(template):
    api = template["Resources"]["SearchApi"]["Properties"]
    assert api["EndpointConfiguration"]["Type"] == "REGIONAL"
    assert api["BinaryMediaTypes"]
    settings = api["MethodSettings"][0]
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottleBurstLimit"}
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottleRateLimit"}
    post = api["DefinitionBody"]["paths"]["/search"]["post"]
    assert post["security"]["Fn::If"][0] == "UseApiKey"
    for name in ("ApiKey", "UsagePlan", "UsagePlanKey"):
        assert template["Resources"][name]["Condition"] == "UseApiKey"
    assert "security" not in api["DefinitionBody"]["paths"]["/search"]["options"], "preflight carries no key"


def test_logs_have_retention_and_alarms_cover_5xx_throttles_p99(template):
    res = template["Resources"]
    groups = [r for r in res.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert len(groups) == 2 and all(g["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"} for g in groups)
    alarms = {r["Properties"]["MetricName"]: r["Properties"] for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"5XXError", "Throttles", "Duration"} <= set(alarms)
    assert alarms["Duration"]["ExtendedStatistic"] == "p99"
    assert alarms["5XXError"]["Namespace"] == "AWS/ApiGateway"
    for alarm in alarms.values():
        assert alarm["AlarmActions"]["Fn::If"][0] == "HasAlarmEmail"


def test_provisioned_concurrency_is_optional(template):
    fn = template["Resources"]["SearchFunction"]["Properties"]
    assert fn["AutoPublishAlias"] == "live"
    assert fn["ProvisionedConcurrencyConfig"]["Fn::If"][0] == "HasProvisionedConcurrency"
    assert template["Parameters"]["ProvisionedConcurrency"]["Default"] == 0
    assert "$" in template["Parameters"]["ProvisionedConcurrency"]["Description"], "document its cost"


# ----------------------------------------------------------------------------- both modes
def test_embedded_mode_has_a_bucket_and_no_domain(template):
    names = resources_in_mode(template, Backend="faiss")
    assert {"IndexBucket", "IndexBucketPolicy", "SearchFunction", "SearchApi", "IngestRole"} <= names
    assert "SearchDomain" not in names
    assert not {"ApiKey", "UsagePlan", "AlarmTopic"} & names


def test_opensearch_mode_has_a_domain_and_no_bucket(template):
    names = resources_in_mode(template, Backend="opensearch", EnableApiKey="true", AlarmEmail="ops@example.com")
    assert {"SearchDomain", "SearchFunction", "IngestRole", "ApiKey", "UsagePlan", "UsagePlanKey", "AlarmTopic"} <= names
    assert not {"IndexBucket", "IndexBucketPolicy"} & names


def test_outputs_name_what_a_deployer_needs(template):
    outputs = template["Outputs"]
    assert {"ApiUrl", "FunctionName", "IndexBucketName", "DomainEndpoint", "IngestRoleArn"} <= set(outputs)
    assert outputs["IndexBucketName"]["Condition"] == "IsEmbedded"
    assert outputs["DomainEndpoint"]["Condition"] == "IsOpenSearch"
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/${StageName}/search")
