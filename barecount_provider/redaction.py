"""Secret redaction for everything BareCount writes, built on Airflow's own secrets masker.

Airflow's masker (task SDK: ``airflow.sdk._shared.secrets_masker``) already knows two things: values
registered with ``mask_secret`` (connection passwords, secret-backend values, the fernet key) and
*sensitive key names* (``DEFAULT_SENSITIVE_FIELDS`` plus ``[core] sensitive_var_conn_names``). BareCount reuses
both and adds:

* ``BUILTIN_PATTERNS``: named regular expressions for secrets that were never registered (cloud keys, tokens,
  JWTs, passwords inside URLs, private keys, ...), in the spirit of gitleaks and detect-secrets, tuned so that
  BareCount's own identifiers (hex correlation ids, run tokens, trace and span ids, ``sha256:`` digests,
  UUIDs, timestamps, run ids) are left alone;
* ``[barecount] redact_value_patterns`` (extra expressions) and ``[barecount] redact_key_names`` (extra
  sensitive key names).

The patterns are compiled into one expression, scanned once per string; pairs are only matched where a
sensitive name occurs; short results are cached.

:class:`Redactor` applies all of it to log lines, log fields, metric tags and span attributes.
:func:`install_in_airflow_masker` makes the same patterns and key names apply inside Airflow's masker, which is
what the task supervisor runs over every line it writes to a task's log file (see docs/logging.md), and
registers the values of sensitively named environment variables with it (:func:`register_env_secrets`,
``[barecount] redact_env_name_patterns``). Bare AWS secret access keys are found by shape, randomness and
nearby AWS context (``[barecount] redact_aws_secret_keys``). :func:`redacted_stdio` and
:meth:`Redactor.redact_strings` are the last step of the command's output and of the Evidence API's answers.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import functools
import logging
import math
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from barecount_provider import config
from barecount_provider.adapters import airflow as airflow_adapter

if TYPE_CHECKING:
    from airflow.sdk._shared.secrets_masker import SecretsMasker

    _MaskerBase = SecretsMasker
else:
    _MaskerBase = object

log = logging.getLogger(__name__)

_T = TypeVar("_T")

REPLACEMENT = "***"
"""What a secret is replaced with: the same token as Airflow's masker."""

# ------------------------------------------------------------------------------------------------ patterns
#
# Conventions of BUILTIN_PATTERNS:
# * the whole match is replaced, except a named group ``pre``, which is kept (the key of a pair, the scheme
#   and user of a URL): ``AccountKey=abc`` becomes ``AccountKey=***``;
# * every top-level alternative starts with a literal character, boundaries come right after it as
#   look-behinds (``gh(?<![A-Za-z0-9_]gh)...`` instead of ``\bgh...``). The patterns are joined into one
#   expression, and only when each branch starts with a literal can Python's ``re`` skip, in C, the positions
#   where no secret can start; one non-literal branch makes the scan about ten times slower;
# * flags are scoped, ``(?i:...)``, and there are no back-references (one expression, one numbering).
#
# [barecount] redact_value_patterns follow the first and last rule (a leading ``(?i)`` is scoped for you);
# they are compiled into an expression of their own, so they need not start with a literal.

BUILTIN_PATTERNS: dict[str, str] = {
    # --- keys and blocks -------------------------------------------------------------------------------
    "private_key_pem": (
        r"-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----|(?:\\[nr]|[A-Za-z0-9+/=\s:,-])*)"
    ),
    "jwt": r"e(?<![A-Za-z0-9_-]e)yJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "url_password": r"(?P<pre>://(?<=[A-Za-z0-9]://)[^\s:/@?#\"'<>]*:)[^\s/?#\"'<>]+(?=@)",
    "authorization_header": (
        r"(?P<pre>uthorization(?<=[Aa]uthorization)[\"']?[ \t]*[:=][ \t]*[\"']?"
        r"(?:(?i:basic|bearer|token|digest|negotiate|apikey|sso-key)[ \t]+)?)[^\s\"',;]+"
    ),
    "bearer_token": r"(?P<pre>earer(?<=[Bb]earer)(?<![A-Za-z0-9_].earer)[ \t]+)[A-Za-z0-9._~+/-]{16,}=*",
    "cli_password_flag": (
        r"(?P<pre>-(?<![A-Za-z0-9_-]-)-?(?i:password|passwd|token|secret|api-key|apikey)[ \t]+)(?!-)[^\s\"']+"
    ),
    # --- AWS -------------------------------------------------------------------------------------------
    "aws_access_key_id": r"A(?<![A-Za-z0-9_]A)(?:3T[A-Z0-9]|KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9_])",
    "aws_session_token": r"FwoGZXIvYXdz[A-Za-z0-9/+=]{40,}|IQoJb3JpZ2lu[A-Za-z0-9/+=]{40,}",
    # (aws_secret_access_key=..., "SecretAccessKey": ..., X-Amz-Signature=... : the key-value rule below)
    # --- source hosting and package registries -----------------------------------------------------------
    "github_token": r"gh(?<![A-Za-z0-9_]gh)[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])",
    "github_fine_grained_pat": r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,255}",
    "gitlab_token": r"gl(?<![A-Za-z0-9_]gl)(?:pat|dt|ptt|rt|soat)-[A-Za-z0-9_-]{20,}",
    "npm_token": r"npm_(?<![A-Za-z0-9_]npm_)[A-Za-z0-9]{36}(?![A-Za-z0-9_])",
    "pypi_token": r"pypi-AgE[A-Za-z0-9_-]{50,}",
    "atlassian_api_token": r"ATATT3[A-Za-z0-9_=-]{50,}",
    "huggingface_token": r"hf_(?<![A-Za-z0-9_]hf_)[A-Za-z0-9]{34,}(?![A-Za-z0-9_])",
    # --- chat, mail, payments -----------------------------------------------------------------------------
    "slack_token": (
        r"xox(?<![A-Za-z0-9_]xox)[abposre]-(?:[0-9]+-)*[A-Za-z0-9-]{10,}"
        r"|xapp-(?<![A-Za-z0-9_]xapp-)[0-9]-[A-Za-z0-9-]{20,}"
    ),
    "slack_webhook": r"(?P<pre>hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_+-]+",
    "discord_webhook": r"(?P<pre>discord(?:app)?\.com/api/webhooks/[0-9]+/)[A-Za-z0-9_-]+",
    "telegram_bot_token": r"(?P<pre>:)AA(?<=[0-9]{8}:AA)[A-Za-z0-9_-]{33}(?![A-Za-z0-9_-])",
    "stripe_secret_key": (
        r"sk_(?<![A-Za-z0-9_]sk_)(?:live|test)_[A-Za-z0-9]{20,}"
        r"|rk_(?<![A-Za-z0-9_]rk_)(?:live|test)_[A-Za-z0-9]{20,}"
    ),
    "stripe_webhook_secret": r"whsec_(?<![A-Za-z0-9_]whsec_)[A-Za-z0-9]{24,}",
    "square_token": (
        r"sq0(?<![A-Za-z0-9_]sq0)(?:atp|csp)-[A-Za-z0-9_-]{22,60}"
        r"|EAAA(?<![A-Za-z0-9_]EAAA)[A-Za-z0-9_-]{60}(?![A-Za-z0-9_-])"
    ),
    "shopify_token": r"shp(?<![A-Za-z0-9_]shp)(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
    "twilio_api_key": r"SK(?<![A-Za-z0-9_]SK)[0-9a-fA-F]{32}(?![A-Za-z0-9_])",
    "sendgrid_api_key": r"SG\.(?<![A-Za-z0-9_]SG\.)[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
    "mailgun_api_key": r"key-(?<![A-Za-z0-9_]key-)[0-9a-zA-Z]{32}(?![A-Za-z0-9_])",
    # --- AI platforms -------------------------------------------------------------------------------------
    "anthropic_api_key": r"sk-ant-(?<![A-Za-z0-9_]sk-ant-)[a-z]{3,8}[0-9]{0,3}-[A-Za-z0-9_-]{32,}",
    "openai_api_key": (
        r"sk-(?<![A-Za-z0-9_]sk-)(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{16,}T3BlbkFJ[A-Za-z0-9_-]{16,}"
        r"|sk-(?<![A-Za-z0-9_]sk-)(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}"
        r"|sk-(?<![A-Za-z0-9_]sk-)[A-Za-z0-9]{48}(?![A-Za-z0-9_-])"
    ),
    # --- clouds and platforms -----------------------------------------------------------------------------
    "google_api_key": r"AIza(?<![A-Za-z0-9_]AIza)[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",
    "gcp_service_account_private_key": r"(?P<pre>private_key[\"']?[ \t]*[:=][ \t]*[\"'])(?:[^\"'\\\n]|\\.)+",
    "azure_storage_account_key": r"(?P<pre>AccountKey=)[^;\s\"'<>]+",
    "azure_shared_access_key": r"(?P<pre>SharedAccessKey=)[^;\s\"'<>]+",
    "azure_sas_signature": r"(?P<pre>sig=(?<=[?&]sig=))[A-Za-z0-9%+/=_-]{16,}",
    # The first four characters of an Azure AD client secret come before its fixed "Q~" and stay visible.
    "azure_ad_client_secret": (
        r"Q~(?<=(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}[0-9]Q~)[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"
    ),
    "vault_token": r"hv(?<![A-Za-z0-9_]hv)[sbr]\.[A-Za-z0-9_-]{24,}",
    "digitalocean_token": r"do(?<![A-Za-z0-9_]do)[opr]_v1_[a-f0-9]{64}",
    "databricks_token": r"dapi(?<![A-Za-z0-9_]dapi)[a-f0-9]{32}(?:-[0-9])?(?![A-Za-z0-9_])",
    "heroku_api_key": r"HRKU-(?<![A-Za-z0-9_]HRKU-)[A-Za-z0-9_-]{60}",
    "grafana_token": (
        r"glsa_(?<![A-Za-z0-9_]glsa_)[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_(?<![A-Za-z0-9_]glc_)[A-Za-z0-9+/]{32,}={0,2}"
    ),
    "newrelic_key": r"NR(?<![A-Za-z0-9_]NR)(?:AK|AA|II)-[A-Z0-9]{27}",
    "postman_api_key": r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}",
    "doppler_token": r"dp\.(?<![A-Za-z0-9_]dp\.)(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}",
    "linear_api_key": r"lin_api_(?<![A-Za-z0-9_]lin_api_)[A-Za-z0-9]{40}",
    "age_secret_key": r"AGE-SECRET-KEY-1[0-9A-Z]{58}",
    "sentry_dsn_key": r"(?P<pre>://)[0-9a-f]{32}(?=@[A-Za-z0-9.-]*sentry)",
}
"""Named regular expressions of secrets BareCount redacts wherever it finds them."""

BASE64_LINE_PATTERN = (
    r"(?m:^[ \t]*(?:(?=[A-Za-z0-9+/]*[G-Zg-z+/])[A-Za-z0-9+/]{40,}={0,2}"
    r"|(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])[A-Za-z0-9+/]{20,39}={0,2})[ \t]*$)"
)
"""A line that is nothing but base64: 40+ characters (not only hex: digests and trace ids must survive), or
20+ mixing upper case, lower case and digits (the short last line of a key).

print() of a PEM block reaches the supervisor one line at a time, so the body lines of a private key arrive
without their BEGIN line; a token printed alone on a line does too."""

KEY_VALUE_PATTERN = (
    r"(?P<key>[A-Za-z0-9_.-](?<![A-Za-z0-9_.-].)[A-Za-z0-9_.-]{0,63})"
    r"(?P<sep>[\"']?[ \t]*[:=][ \t]*)"
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|\{[^{}\n]*\}"
    r"|(?i:basic|bearer|token|digest|negotiate)[ \t]+[^\s\"',;]+"
    r"|[^\s,;&\"'<>(){}\[\]]+)"
)
"""``key=value``, ``key: value``, ``"key": "value"`` in text. The value is redacted when the key is a
sensitive name (the same test as for mapping keys: Airflow's names, BareCount's, ``redact_key_names``). After
a colon an unquoted value must also look like a secret (6+ characters with a digit): "refresh token: timed
out" is a sentence."""

BUILTIN_KEY_NAMES: frozenset[str] = frozenset(
    {
        "credential",
        "cookie",
        "pwd",
        "signature",
        "jwt",
        "fernet_key",
        "client_key",
        "ssh_key",
        "encryption_key",
        "signing_key",
        "session_key",
        "master_key",
        "account_key",
        "accountkey",
        "accesskey",
        "app_key",
        "application_key",
        "sas_url",
        "conn_uri",
        "connection_uri",
    }
)
"""Key names BareCount hides on top of Airflow's (substring match on the normalised key, like Airflow)."""

EXEMPT_KEY_SUFFIX = "run_token"
"""BareCount's run token is a keyed-hash identifier meant for logs: a key ending in it is not a secret's key
(Airflow's ``token`` name would otherwise hide it). Its value still goes through the value patterns."""

AWS_SECRET_KEY_CANDIDATE = (
    r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=_-])"
)
"""40 base64 characters with upper and lower case, standing alone (not part of a longer base64, base64url or
hex run, not padded): the shape of an AWS secret access key. A git SHA (hex, one case) never matches; a
base64 SHA-1 (28 characters) or SHA-256 (44, or 43 unpadded) digest neither."""

AWS_CONTEXT_WORDS: tuple[str, ...] = ("aws", "amazon", "secret", "credential")
"""Words (any case) that put a candidate key in AWS context, besides an access key id (``AKIA...``)."""

AWS_CONTEXT_PATTERN = r"(?i:aws|amazon|secret|credential)|A(?:3T[A-Z0-9]|KIA|SIA|BIA|CCA)[A-Z0-9]{16}"

AWS_CONTEXT_WINDOW = 100
"""How many characters before or after a candidate key its AWS context may be (trufflehog pairs a key id
and a key in the same chunk; gitleaks and detect-secrets look for a keyword on the same line)."""

AWS_SECRET_KEY_MIN_ENTROPY = 4.1
"""Shannon entropy (bits per character) a candidate must reach. Random 40-character base64 keys: minimum
4.16, median 4.78 over 100,000; paths stay below 3.8, and a CamelCase name that reaches 4.2 is told apart by
its few upper-case letters (:func:`looks_like_aws_secret_key`). benchmarks/bench_aws_secret_keys.py measures
both corpora."""

AWS_SECRET_KEY_MODES = ("context", "anywhere")
_AWS_KEY_ID_PREFIXES = ("A3T", "AKIA", "ASIA", "ABIA", "ACCA")

_MAX_DEPTH = 32
_CACHE_SIZE = 4096
_CACHED_TEXT_MAX = 512
_MIN_SECRET_LENGTH = 6
_MAX_KEY_LENGTH = 64  # as in KEY_VALUE_PATTERN
_LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
_AUTH_SCHEME = re.compile(r"(?i:basic|bearer|token|digest|negotiate)[ \t]")
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _scoped(pattern: str) -> str:
    """Turn a leading global flag group, ``(?i)rest``, into a scoped one, ``(?i:rest)``."""
    match = _LEADING_FLAGS.match(pattern)
    if match:
        return f"(?{match.group(1)}:{pattern[match.end() :]})"
    return pattern


def _compile_one(pattern: str, origin: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(_scoped(pattern))
    except re.error as err:
        raise ValueError(f"{origin}: {pattern!r} is not a valid regular expression ({err})") from None
    if compiled.fullmatch(""):
        raise ValueError(f"{origin}: {pattern!r} matches the empty string (it would redact everything)")
    return compiled


class _PatternSet:
    """Patterns joined into one expression for the scan; each kept apart to tell which one matched."""

    def __init__(self, patterns: Iterable[tuple[str, str]]) -> None:
        self.members: list[re.Pattern[str]] = []
        bodies: list[str] = []
        for origin, body in patterns:
            compiled = _compile_one(body, origin)
            self.members.append(compiled)
            # The joined expression needs no groups (capturing ones make every branch slow): ``pre`` is read
            # from the member that matched.
            bodies.append(compiled.pattern.replace("(?P<pre>", "(?:"))
        self.scan: re.Pattern[str] | None = None
        if bodies:
            try:
                self.scan = re.compile("|".join(bodies))
            except re.error as err:
                raise ValueError(
                    f"[{config.SECTION}] redact_value_patterns: the patterns cannot be joined into one "
                    f"expression ({err}); use scoped flags (?i:...), no back-references, no repeated group names"
                ) from None

    def sub(self, text: str) -> str:
        scan = self.scan
        if scan is None:
            return text
        match = scan.search(text)
        if match is None:
            return text
        out: list[str] = []
        pos = 0
        while match is not None:
            start = match.start()
            member = None
            for pattern in self.members:  # the first member matching here is the branch the scan took
                member = pattern.match(text, start)
                if member is not None:
                    break
            if member is None:  # pragma: no cover - the joined expression and its members agree
                member = match
            end = member.end()
            if end <= start:  # an empty match (a configured pattern): nothing to redact here
                match = scan.search(text, start + 1)
                continue
            out.append(text[pos:start])
            out.append((member.groupdict().get("pre") or "") + REPLACEMENT)
            pos = end
            match = scan.search(text, pos)
        out.append(text[pos:])
        return "".join(out)


_NON_WORD = re.compile(r"\W+")


def _normalise_key(name: str) -> str:
    # Airflow's normalisation (should_hide_value_for_key): lower case, runs of non-word characters to "_".
    return _NON_WORD.sub("_", name.strip().lower())


def is_exempt_key(name: str) -> bool:
    """True for BareCount's own identifier keys (``run_token``, ``barecount.run_token``, ...)."""
    normalised = _normalise_key(name)
    return normalised == EXEMPT_KEY_SUFFIX or normalised.endswith("_" + EXEMPT_KEY_SUFFIX)


def _looks_secret(value: str) -> bool:
    return len(value) >= _MIN_SECRET_LENGTH and any(char.isdigit() for char in value)


def _looks_random(key: str, in_base64: bool = False) -> bool:
    """A "key" that is a base64 run (a digest before its ``=`` padding), not a name: 16+ characters (8+ right
    after a ``+`` or ``/``) mixing upper case, lower case and digits without a separator. Random text
    contains sensitive stems by chance (``...Pwd...``, ``...dsn...``)."""
    return (
        len(key) >= (8 if in_base64 else 16)
        and not any(char in "_.-" for char in key)
        and any(char.isdigit() for char in key)
        and any(char.isupper() for char in key)
        and any(char.islower() for char in key)
    )


def _entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character."""
    size = len(text)
    return -sum(count / size * math.log2(count / size) for count in collections.Counter(text).values())


def looks_like_aws_secret_key(token: str) -> bool:
    """True when a 40-character candidate (:data:`AWS_SECRET_KEY_CANDIDATE`) is random enough to be a key:
    entropy of at least :data:`AWS_SECRET_KEY_MIN_ENTROPY`, and, when it is letters only, upper and lower case
    mixed as in random text (a quarter to three quarters upper case) rather than as in a CamelCase name."""
    if _entropy(token) < AWS_SECRET_KEY_MIN_ENTROPY:
        return False
    if token.isalpha():
        upper = sum(1 for char in token if char.isupper())
        return 10 <= upper <= 30
    return True


# ----------------------------------------------------------------------------------------- Airflow masker


def _airflow_maskers(include_core: bool = True) -> list[Any]:
    """The masker singletons of this process: the task SDK's first, then airflow-core's (when installed)."""
    return airflow_adapter.masker_singletons(include_core=include_core)


# ----------------------------------------------------------------------------------------------- Redactor


class Redactor:
    """Redacts secrets from strings, bytes, mappings, sequences and exceptions.

    Layers, cheapest first: values registered with Airflow's ``mask_secret`` (Airflow's own compiled
    replacer); value patterns (``BUILTIN_PATTERNS``, ``[barecount] redact_value_patterns``, lone base64 lines);
    sensitive key names (Airflow's, BareCount's and ``[barecount] redact_key_names``), for mapping keys and
    for ``key=value`` pairs in text.

    :param extra_key_names: key names added to Airflow's sensitive names.
    :param extra_patterns: regular expressions added to ``BUILTIN_PATTERNS``.
    :param maskers: Airflow masker instances whose registered secrets are redacted; default: this process's.
    """

    def __init__(
        self,
        extra_key_names: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        maskers: Iterable[Any] | None = None,
        aws_secret_keys: str = "context",
        env_name_patterns: Iterable[str] | None = None,
    ) -> None:
        if env_name_patterns is None:
            env_name_patterns = config.OPTIONS["redact_env_name_patterns"][1].split(",")
        env_globs = [pattern.strip().upper() for pattern in env_name_patterns if pattern.strip()]
        self._env_name_matcher = (
            re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in env_globs))
            if env_globs
            else None
        )
        self._env_decisions: dict[tuple[str, int], bool] = {}
        if aws_secret_keys not in AWS_SECRET_KEY_MODES:
            raise ValueError(
                f"aws_secret_keys: {aws_secret_keys!r} is not one of {', '.join(AWS_SECRET_KEY_MODES)}"
            )
        self.aws_secret_keys_anywhere = aws_secret_keys == "anywhere"
        self._aws_candidate = re.compile(AWS_SECRET_KEY_CANDIDATE)
        self._aws_context = re.compile(AWS_CONTEXT_PATTERN)
        self._maskers = list(maskers) if maskers is not None else _airflow_maskers()
        airflow_names: set[str] = set()
        try:
            airflow_names |= set(airflow_adapter.masker_module(airflow_adapter.SDK_MASKER_MODULE).DEFAULT_SENSITIVE_FIELDS)
        except Exception:  # pragma: no cover - the task SDK is a dependency of Airflow 3
            pass
        for masker in self._maskers:
            airflow_names |= {str(name).lower() for name in getattr(masker, "sensitive_variables_fields", ())}
        self.extra_key_names: frozenset[str] = frozenset(
            name.strip().lower() for name in (*BUILTIN_KEY_NAMES, *extra_key_names) if name.strip()
        )
        self.key_names: frozenset[str] = frozenset(airflow_names) | self.extra_key_names
        self._builtin = _PatternSet(BUILTIN_PATTERNS.items())
        self._extra = _PatternSet(
            (f"[{config.SECTION}] redact_value_patterns[{index}]", pattern)
            for index, pattern in enumerate(extra_patterns)
        )
        self._base64_line = re.compile(BASE64_LINE_PATTERN)
        self._key_value = re.compile(KEY_VALUE_PATTERN)
        # A pair is only looked at where its key contains some sensitive name: the longest part of each name
        # ("api_key" -> "api") is searched in the lower-cased text, and only around such a hit is the pair
        # matched. Most lines have no hit and cost one scan.
        stems = {max(re.split(r"\W+|_", name), key=len) for name in self.key_names}
        stems = {stem for stem in stems if not any(other != stem and other in stem for other in stems)}
        self._key_name_hint = re.compile(
            "|".join(re.escape(stem) for stem in sorted(stems, key=len, reverse=True))
        )
        self._hidden_keys: dict[str, bool] = {}
        self._extra_hidden_keys: dict[str, bool] = {}
        self._patterns_cache: dict[str, str] = {}
        self._text_cache: dict[str, str] = {}
        self._replacers: list[Any] = []
        self._masker_hidden_keys: dict[str, bool] = {}

    @classmethod
    def from_config(cls) -> Redactor:
        """A redactor with ``[barecount] redact_key_names``, ``redact_value_patterns``,
        ``redact_aws_secret_keys`` and ``redact_env_name_patterns``; raises on bad config."""
        return cls(
            config.redact_key_names(),
            config.redact_value_patterns(),
            aws_secret_keys=config.redact_aws_secret_keys(),
            env_name_patterns=config.redact_env_name_patterns(),
        )

    # -- keys ----------------------------------------------------------------------------------------------

    def hides_key(self, name: Any) -> bool:
        """True when values under this key are secrets (Airflow's names, BareCount's, configured ones)."""
        if not isinstance(name, str):
            return False
        cached = self._hidden_keys.get(name)
        if cached is None:
            normalised = _normalise_key(name)
            cached = not is_exempt_key(name) and any(key in normalised for key in self.key_names)
            if len(self._hidden_keys) >= _CACHE_SIZE:
                self._hidden_keys.clear()
            self._hidden_keys[name] = cached
        return cached

    def hides_extra_key(self, name: str) -> bool:
        """Only BareCount's and the configured names (Airflow's own are Airflow's masker's business)."""
        cached = self._extra_hidden_keys.get(name)
        if cached is None:
            normalised = _normalise_key(name)
            cached = any(key in normalised for key in self.extra_key_names)
            if len(self._extra_hidden_keys) >= _CACHE_SIZE:
                self._extra_hidden_keys.clear()
            self._extra_hidden_keys[name] = cached
        return cached

    def masker_hides_key(self, name: str, airflow_decision: Callable[[str], bool]) -> bool:
        """The extended masker's key test: exempt names, then BareCount's names, then Airflow's (cached:
        Airflow's own test runs a substitution and a scan of its names for every key of every event)."""
        cached = self._masker_hidden_keys.get(name)
        if cached is None:
            cached = not is_exempt_key(name) and (self.hides_extra_key(name) or bool(airflow_decision(name)))
            if len(self._masker_hidden_keys) >= _CACHE_SIZE:
                self._masker_hidden_keys.clear()
            self._masker_hidden_keys[name] = cached
        return cached

    def is_sensitive_env_name(self, name: str, masker: Any = None) -> bool:
        """True when the value of environment variable ``name`` is a secret: the name matches ``[barecount]
        redact_env_name_patterns`` (any case) or Airflow's ``masker`` treats it as sensitive. BareCount's own
        identifiers (``BARECOUNT_RUN_TOKEN``) are not secrets. Cached per name."""
        cache_key = (name, id(masker))
        decided = self._env_decisions.get(cache_key)
        if decided is None:
            matcher = self._env_name_matcher
            decided = not is_exempt_key(name) and (
                (matcher is not None and matcher.match(name.upper()) is not None)
                or (masker is not None and _airflow_hides_key(masker, name))
            )
            if len(self._env_decisions) >= _CACHE_SIZE:
                self._env_decisions.clear()
            self._env_decisions[cache_key] = decided
        return decided

    # -- text ----------------------------------------------------------------------------------------------

    def _current_replacers(self) -> list[Any]:
        """The maskers' replacers now; the text cache is dropped when they changed (a secret was registered
        since: earlier results may be stale)."""
        replacers = [masker.replacer for masker in self._maskers]
        if replacers != self._replacers:
            self._replacers = replacers
            self._text_cache.clear()
        return replacers

    def redact_text(self, text: str) -> str:
        """Registered secrets (Airflow's masker), then value patterns and sensitive ``key=value`` pairs."""
        if not text:
            return text
        return self._redact_text(text, self._current_replacers())

    def _redact_text(self, text: str, replacers: list[Any]) -> str:
        """:meth:`redact_text` with the maskers' current replacers (:meth:`_current_replacers`) in hand."""
        short = len(text) <= _CACHED_TEXT_MAX
        if short:
            cached = self._text_cache.get(text)
            if cached is not None:
                return cached
        result = text
        applied = None
        for replacer in replacers:
            if replacer is not None and replacer.pattern != applied:  # core and SDK maskers often agree
                result = replacer.sub(REPLACEMENT, result)
                applied = replacer.pattern
        result = self.redact_patterns(result)
        if short:
            if len(self._text_cache) >= _CACHE_SIZE:
                self._text_cache.clear()
            self._text_cache[text] = result
        return result

    def redact_values(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        """A flat mapping whose string values are redacted as text, others unchanged; not key-aware (for tag
        and span attribute values, whose keys are BareCount's own). The same as :meth:`redact_text` on each
        value, with one check of the registered secrets for the whole mapping: the try's identifiers repeat
        in every tag set and span, so most values are answered from the cache."""
        self._current_replacers()
        return {
            key: self._checked_text(value) if isinstance(value, str) else value
            for key, value in mapping.items()
        }

    def _checked_text(self, text: str) -> str:
        """:meth:`redact_text` for a caller that has just checked the registered secrets
        (:meth:`_current_replacers`): a string seen before is answered from the cache at once."""
        cached = self._text_cache.get(text)
        if cached is not None or not text:
            return cached if cached is not None else text
        return self._redact_text(text, self._replacers)  # checked by the caller: current

    def redact_patterns(self, text: str) -> str:
        """Everything but registered secrets (what Airflow's masker lacks). Short results are cached."""
        if len(text) < 5:  # "pwd=x" is the shortest thing found
            return text
        if len(text) > _CACHED_TEXT_MAX:
            return self._redact_patterns(text)
        cached = self._patterns_cache.get(text)
        if cached is None:
            cached = self._redact_patterns(text)
            if len(self._patterns_cache) >= _CACHE_SIZE:
                self._patterns_cache.clear()
            self._patterns_cache[text] = cached
        return cached

    def _redact_patterns(self, text: str) -> str:
        if len(text) >= 40:  # before the built-in patterns, which hide the access key id that is context here
            text = self._redact_aws_secret_keys(text)
        text = self._builtin.sub(text)
        text = self._extra.sub(text)
        if len(text) >= 20:
            text = self._base64_line.sub(REPLACEMENT, text)
        return self._redact_key_values(text)

    def _redact_aws_secret_keys(self, text: str) -> str:
        """Bare AWS secret access keys: a 40-character candidate that looks random, near AWS context (or
        anywhere, with ``[barecount] redact_aws_secret_keys = anywhere``)."""
        if not self.aws_secret_keys_anywhere:
            lowered = text.lower()
            if not any(word in lowered for word in AWS_CONTEXT_WORDS) and not any(
                prefix in text for prefix in _AWS_KEY_ID_PREFIXES
            ):
                return text
        out: list[str] = []
        pos = 0
        for candidate in self._aws_candidate.finditer(text):
            token = candidate.group()
            if not looks_like_aws_secret_key(token):
                continue
            start, end = candidate.span()
            if not self.aws_secret_keys_anywhere:
                window = (
                    text[max(0, start - AWS_CONTEXT_WINDOW) : start]
                    + " "
                    + text[end : end + AWS_CONTEXT_WINDOW]
                )
                if self._aws_context.search(window) is None:
                    continue
            out.append(text[pos:start])
            out.append(REPLACEMENT)
            pos = end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _redact_key_values(self, text: str) -> str:
        lowered = text.lower()
        if len(lowered) != len(text):  # a few non-ASCII characters lower-case to two
            lowered = text.translate(_ASCII_LOWER)
        hint = self._key_name_hint.search(lowered)
        if hint is None:
            return text
        out: list[str] = []
        pos = 0
        while hint is not None:
            key_start = hint.start()
            floor = max(pos, key_start - _MAX_KEY_LENGTH)  # a longer key is no key (and no quadratic walk)
            while key_start > floor and text[key_start - 1] in _KEY_CHARACTERS:
                key_start -= 1
            pair = self._key_value.match(text, key_start)
            redacted = None
            if pair is not None and pair.end("key") >= hint.end():
                in_base64 = key_start > 0 and text[key_start - 1] in "+/"
                redacted = self._redacted_value(
                    pair.group("key"), pair.group("sep"), pair.group("value"), in_base64
                )
            if pair is None or redacted is None:
                hint = self._key_name_hint.search(lowered, hint.end())
                continue
            out.append(text[pos : pair.start("value")])
            out.append(redacted)
            pos = pair.end()
            hint = self._key_name_hint.search(lowered, pos)
        out.append(text[pos:])
        return "".join(out)

    def _redacted_value(self, key: str, sep: str, value: str, in_base64: bool = False) -> str | None:
        if value.startswith(REPLACEMENT) or _looks_random(key, in_base64) or not self.hides_key(key):
            return None
        first = value[0]
        if first in "\"'":
            return f"{first}{REPLACEMENT}{first}" if len(value) > 2 else None
        if first == "{":
            return REPLACEMENT
        scheme = _AUTH_SCHEME.match(value)
        if scheme:
            return value[: scheme.end()] + REPLACEMENT
        if "=" not in sep and not _looks_secret(value):
            return None
        return REPLACEMENT

    # -- structures ----------------------------------------------------------------------------------------

    def redact_mapping(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        """Key-aware: every string under a sensitive key becomes ``***``; other values are redacted as usual."""
        self._current_replacers()  # once: _value answers strings from the text cache it validates
        return self._mapping(mapping, 0)

    def redact(self, value: Any) -> Any:
        """Redact ``value``: str, bytes, mappings (key-aware), lists/tuples/sets and exceptions.

        Strings and containers come back as new objects; an exception is redacted in place (its ``args``,
        ``__notes__``, ``__cause__`` and ``__context__``, as Airflow's masker does) and returned. Any other
        object is returned unchanged.
        """
        self._current_replacers()  # once: _value answers strings from the text cache it validates
        return self._value(value, 0)

    def redact_strings(self, value: Any, depth: int = 0) -> Any:
        """Every string in ``value`` (JSON-like: mappings, lists, tuples) redacted as text; keys and other
        values kept. Not key-aware: for documents already redacted at their source whose field names are
        BareCount's own (a checkpoint's ``signature`` is no secret), served once more through this step."""
        if depth == 0:
            self._current_replacers()
        if isinstance(value, str):
            return self._checked_text(value)
        if depth > _MAX_DEPTH:
            return REPLACEMENT
        if isinstance(value, Mapping):
            return {key: self.redact_strings(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_strings(item, depth + 1) for item in value]
        return value

    def redact_exception_text(self, exc: BaseException) -> str:
        """The formatted traceback of ``exc`` (with its chain), redacted."""
        return self.redact_text("".join(traceback.format_exception(exc)))

    def _value(self, value: Any, depth: int) -> Any:
        # Entered through redact / redact_mapping, which check the registered secrets first: the text cache
        # is current here.
        if isinstance(value, str):
            return self._checked_text(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if depth > _MAX_DEPTH:
            return REPLACEMENT  # fail closed on absurdly deep (or self-referencing) structures
        if isinstance(value, dict) or isinstance(value, Mapping):  # a dict without the ABC's check
            return self._mapping(value, depth)
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "surrogateescape")
            redacted = self.redact_text(text)
            return value if redacted == text else redacted.encode("utf-8", "surrogateescape")
        if isinstance(value, list):
            return [self._value(item, depth + 1) for item in value]
        if isinstance(value, tuple):
            items = [self._value(item, depth + 1) for item in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        if isinstance(value, (set, frozenset)):
            return type(value)(self._value(item, depth + 1) for item in value)
        if isinstance(value, BaseException):
            return self._exception(value, set())
        return value

    def _mapping(self, mapping: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
        return {
            key: (self._hide_all(item, depth + 1) if self.hides_key(key) else self._value(item, depth + 1))
            for key, item in mapping.items()
        }

    def _hide_all(self, value: Any, depth: int) -> Any:
        """Under a sensitive key: every string (at any depth) becomes ``***``, other scalars stay (as Airflow)."""
        if isinstance(value, (str, bytes, bytearray)):
            return REPLACEMENT
        if depth > _MAX_DEPTH:
            return REPLACEMENT
        if isinstance(value, Mapping):
            return {key: self._hide_all(item, depth + 1) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(self._hide_all(item, depth + 1) for item in value)
        if isinstance(value, (list, set, frozenset)):
            return [self._hide_all(item, depth + 1) for item in value]
        if isinstance(value, BaseException):
            return REPLACEMENT
        return value

    def _exception(self, exc: BaseException, visited: set[int]) -> BaseException:
        if id(exc) in visited or len(visited) > _MAX_DEPTH:
            return exc
        visited.add(id(exc))
        try:
            exc.args = tuple(self._value(arg, 1) for arg in exc.args)
            notes = getattr(exc, "__notes__", None)
            if isinstance(notes, list):
                exc.__notes__ = [self.redact_text(note) if isinstance(note, str) else note for note in notes]
        except (AttributeError, TypeError):  # some extension types refuse new args
            pass
        for linked in (exc.__cause__, exc.__context__):
            if linked is not None:
                self._exception(linked, visited)
        return exc

    # -- structlog -------------------------------------------------------------------------------------------

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        """A structlog processor: the event dict, redacted key-aware."""
        self._current_replacers()  # once: _value answers strings from the text cache it validates
        return self._mapping(event_dict, 0)


@functools.cache
def get_redactor() -> Redactor:
    """This process's redactor, built from config once (``get_redactor.cache_clear()`` after changing it).

    Never raises: a broken ``[barecount] redact_*`` option is logged and the built-in patterns and names are
    used, because the masker hook below runs on every log line the supervisor writes.
    ``Redactor.from_config()`` raises instead (``barecount doctor``).
    """
    try:
        return Redactor.from_config()
    except ValueError as err:
        log.error("BareCount redaction uses its built-in patterns only: %s", err)
        return Redactor()


def redact(value: Any) -> Any:
    """Redact ``value`` with :func:`get_redactor` (see :meth:`Redactor.redact`)."""
    return get_redactor().redact(value)


def redact_text(text: str) -> str:
    """Redact one string with :func:`get_redactor`."""
    return get_redactor().redact_text(text)


_WRITING = threading.local()


class _RedactingStream:
    """A text stream whose ``write`` redacts (:func:`redact_text`); everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: Any) -> Any:
        if isinstance(text, str) and text:
            inner = getattr(_WRITING, "active", False)  # a line logged while the redactor is built (its own error)
            _WRITING.active = True
            try:
                text = Redactor().redact_text(text) if inner else redact_text(text)
            except Exception:  # fail closed
                text = "<redaction-failed>\n" if text.endswith("\n") else "<redaction-failed>"
            finally:
                _WRITING.active = inner
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_stdio() -> Iterator[None]:
    """While inside: what is written to ``sys.stdout`` and ``sys.stderr`` is redacted (a CLI's output)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingStream(saved[0]), _RedactingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def redacting_stdio(func: Callable[..., _T]) -> Callable[..., _T]:
    """Decorate a command's entry point: its whole output goes through :func:`redacted_stdio`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        with redacted_stdio():
            return func(*args, **kwargs)

    return wrapper


def redact_event_dict(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor for BareCount's own log chains."""
    return get_redactor().redact_mapping(event_dict)


# ------------------------------------------------------------- environment variables with sensitive names

ENV_VALUES_NOT_SECRET: frozenset[str] = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})
"""Values of sensitively named variables that are switches, not secrets (``GIT_ASKPASS_TOKEN=false``)."""


def _airflow_hides_key(masker: Any, name: str) -> bool:
    """Airflow's own decision (its built-in names and ``[core] sensitive_var_conn_names``), without
    BareCount's extension, whose extra names (``pwd``, ``cookie``) are meant for keys in text, not for the
    environment (``PWD``)."""
    original = airflow_adapter.original_masker_class(masker)
    return bool(original.should_hide_value_for_key(masker, name))


def sensitive_env_values(environ: Mapping[str, str] | None = None, masker: Any = None) -> list[str]:
    """The values of the sensitively named variables of ``environ`` (default ``os.environ``), each line of a
    multi-line value too (a PEM key printed reaches the supervisor a line at a time); switches and values
    shorter than Airflow's ``[logging] min_length_masked_secret`` are left out, as Airflow's masker does."""
    if masker is None:
        maskers = _airflow_maskers(include_core=False)
        masker = maskers[0] if maskers else None
    min_length = max(1, int(getattr(masker, "min_length_to_mask", 5) or 1))
    values: list[str] = []
    redactor = get_redactor()
    for name, value in (os.environ if environ is None else environ).items():
        if not value or not redactor.is_sensitive_env_name(name, masker):
            continue
        for part in (value, *value.splitlines()) if "\n" in value else (value,):
            part = part.strip()
            if len(part) >= min_length and part.lower() not in ENV_VALUES_NOT_SECRET and part not in values:
                values.append(part)
    return values


_ENV_REGISTERED_BY: int | None = None
"""The pid of the process that last registered ``os.environ`` (inherited by the processes it forks)."""


def register_env_secrets_for_try() -> int:
    """The start of a task try: :func:`register_env_secrets`, unless the process that forked this one (the
    supervisor, right after its masker's reset) registered the same environment, which the forked masker
    holds: then nothing is scanned (reading ``os.environ`` costs about 2 µs a variable). Never raises."""
    if _ENV_REGISTERED_BY is not None and _ENV_REGISTERED_BY == os.getppid():
        return 0
    return register_env_secrets()


def register_env_secrets(
    environ: Mapping[str, str] | None = None, maskers: Iterable[Any] | None = None
) -> int:
    """Register the values of sensitively named environment variables with Airflow's secrets masker(s).

    Default maskers: this process's (task SDK and core). In a task process a value the task SDK's masker does
    not hold yet is registered with ``airflow.sdk.log.mask_secret``, which also tells the supervisor (which
    masks what the task prints); a supervisor that loaded the plugin holds them already (see
    :meth:`BareCountMaskerExtension.reset_masker`), and then this is a dictionary look-up per variable.
    :return: how many values were new to a masker. Never raises.
    """
    global _ENV_REGISTERED_BY
    try:
        targets = list(maskers) if maskers is not None else _airflow_maskers()
        if not targets:
            return 0
        values = sensitive_env_values(environ, targets[0])
        new = 0
        for value in values:
            pattern = re.escape(value)
            for index, masker in enumerate(targets):
                if pattern in masker.patterns:
                    continue
                if index == 0 and maskers is None and _in_task_process():
                    from airflow.sdk.log import mask_secret

                    mask_secret(value)  # this process's SDK masker and the supervisor's
                else:
                    masker.add_mask(value)
                new += 1
        if environ is None:
            _ENV_REGISTERED_BY = os.getpid()
        return new
    except Exception:
        log.warning(
            "BareCount could not register the values of sensitive environment variables", exc_info=True
        )
        return 0


def _in_task_process() -> bool:
    return airflow_adapter.in_supervised_task_process()


# -------------------------------------------------------------------------- extending Airflow's masker


class BareCountMaskerExtension(_MaskerBase):
    """Mixed into the class of Airflow's masker instance by :func:`install_in_airflow_masker`.

    Airflow's ``_redact`` still does everything it did (registered secrets, its sensitive names, depth
    limits, V1EnvVar, enums); every string it returns then goes through BareCount's value patterns, and the
    key check adds BareCount's names and exempts ``run_token``. The ``replacement`` keyword is kept so that
    Airflow's ``__init_subclass__`` compatibility shim leaves the method alone.
    """

    _barecount_original_class: type

    def _redact(
        self, item: Any, name: Any, depth: int, max_depth: int, replacement: str = REPLACEMENT
    ) -> Any:
        redacted = super()._redact(item, name, depth, max_depth, replacement=replacement)
        if isinstance(redacted, str) and redacted:
            try:
                return get_redactor().redact_patterns(redacted)
            except Exception:  # never break the supervisor's log writer; fail closed
                return "<redaction-failed>"
        return redacted

    def reset_masker(self) -> None:
        """Airflow's reset (``supervise_task`` calls it before it forks the task process), then the values of
        sensitive environment variables again: the supervisor masks what the task prints with them, and the
        forked task process inherits them."""
        super().reset_masker()
        register_env_secrets(maskers=[self])

    def should_hide_value_for_key(self, name: Any) -> bool:
        if not isinstance(name, str):
            return bool(super().should_hide_value_for_key(name))
        try:
            return get_redactor().masker_hides_key(name, super().should_hide_value_for_key)
        except Exception:  # never break the supervisor's log writer
            return bool(super().should_hide_value_for_key(name))


def mask_component_event(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor for a component's own logging (scheduler, LocalExecutor worker, triggerer, ...),
    whose chain, unlike a task log file's, has no masking: with ``subprocess_logs_to_stdout`` (LocalExecutor)
    the worker mirrors every line of every task to it."""
    try:
        return get_redactor().redact_mapping(event_dict)
    except Exception:  # fail closed, keep the line's frame
        kept = {key: event_dict[key] for key in ("timestamp", "level", "logger") if key in event_dict}
        return {**kept, "event": "<redaction-failed>"}


def _install_component_log_processor() -> None:
    # structlog's configured chain is shared by reference by every logger built from it (and by the
    # supervisor's forwarders, which copy it), so the processor goes into that list, before the renderer.
    processors = structlog.get_config().get("processors")
    if not isinstance(processors, list) or not processors or mask_component_event in processors:
        return
    from airflow.sdk.log import mask_logs

    if mask_logs in processors:
        return  # Airflow's mask_logs already runs the extended masker (dag.test(), a trigger's runner)
    if airflow_adapter.in_supervised_task_process():
        return  # a task process: its events are masked by its supervisor, once is enough
    processors.insert(len(processors) - 1, mask_component_event)


def _uninstall_component_log_processor() -> None:
    processors = structlog.get_config().get("processors")
    if isinstance(processors, list) and mask_component_event in processors:
        processors.remove(mask_component_event)


def install_in_airflow_masker(*, include_core: bool = False, component_logs: bool = True) -> bool:
    """Make BareCount's value patterns and key names apply inside Airflow's own secrets masker.

    The task SDK's masker singleton (``airflow.sdk._shared.secrets_masker._secrets_masker()``) is what the
    supervisor's log-file processor (``airflow.sdk.log.mask_logs``) runs over every event it writes: task
    ``print()`` and subprocess output, stderr, tracebacks and the task's structured log events. The trigger,
    callback and DAG-processor log files use the same processor. The instance is extended in place (its class
    becomes a subclass of its own class), so every holder of a reference, the secrets already registered
    and the values Airflow configured on it are kept; Airflow's ``reset_secrets_masker()`` (called by
    ``supervise_task``) resets registered secrets only, not the extension. Processes forked afterwards
    (LocalExecutor workers, task processes) inherit it.

    Must run in the process that supervises tasks (the LocalExecutor worker, forked from the scheduler; the
    Celery worker; ...) before the task starts; running it in the task process too is harmless.

    It also registers the values of this process's sensitively named environment variables
    (:func:`register_env_secrets`), and the extended masker registers them again after each of Airflow's
    resets (:meth:`BareCountMaskerExtension.reset_masker`).

    :param include_core: also extend airflow-core's masker (API server responses, core component logs). Off
        by default: the API's connection form merges back values that are exactly ``***`` only, so a
        partially redacted value (``postgres://user:***@host``) saved from the UI would overwrite the secret.
    :param component_logs: also add :func:`mask_component_event` to this process's structlog chain when it has
        no masking (the scheduler's, a worker's): the copy of task output that LocalExecutor workers mirror to
        the scheduler's stdout is then redacted too.
    :return: True when the extension is active (installed now or before), False when Airflow's masker could
        not be found or extended. Idempotent; never raises.
    """
    maskers = _airflow_maskers(include_core=include_core)
    if not maskers:
        return False
    try:
        get_redactor()  # compile once here, not on the supervisor's first log line
        for masker in maskers:
            if not isinstance(masker, BareCountMaskerExtension):
                airflow_adapter.extend_masker(masker, BareCountMaskerExtension)
    except Exception:
        log.warning("BareCount could not extend Airflow's secrets masker", exc_info=True)
        return False
    register_env_secrets()  # this process's environment (the scheduler's, an API server's); never raises
    if component_logs:
        try:
            _install_component_log_processor()
        except Exception:
            log.warning("BareCount could not add redaction to this process's log chain", exc_info=True)
    return True


def uninstall_from_airflow_masker() -> None:
    """Undo :func:`install_in_airflow_masker` (tests, ``barecount doctor``)."""
    for masker in _airflow_maskers(include_core=True):
        if isinstance(masker, BareCountMaskerExtension):
            airflow_adapter.restore_masker(masker)
    _uninstall_component_log_processor()


def is_installed_in_airflow_masker() -> bool:
    """True when the task SDK's masker (the supervisor's) carries BareCount's extension."""
    maskers = _airflow_maskers(include_core=False)
    return bool(maskers) and isinstance(maskers[0], BareCountMaskerExtension)
