"""Which calls the cache serves, for how long, and whether it also matches similar prompts.

Per call: the `x-meterline-cache` header (`on`, `off`, `refresh`, `semantic`), the first rule of
`cache.rules` matching the call's model and feature, and the defaults of the `cache` section.
A call is looked up and stored when the cache is on for it (`default: on`, or the header asks)
and it is deterministic enough: an embeddings call always is; another samples at most at
`max_temperature` (a call that sets no temperature samples at the provider's default, 1) unless
the header says `on`. `refresh` skips the lookup and stores the fresh answer; `off`, or a rule
with `enabled: false`, bypasses the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterline.config import CacheConfig, CacheRuleConfig

HEADER = "x-meterline-cache"
HEADER_VALUES = ("on", "off", "refresh", "semantic")
PROVIDER_DEFAULT_TEMPERATURE = 1.0


class CacheHeaderInvalid(ValueError):
    def __init__(self, value: str) -> None:
        super().__init__(f"header '{HEADER}' is {value!r}; use one of: {', '.join(HEADER_VALUES)}")


class SemanticNotConfigured(ValueError):
    def __init__(self) -> None:
        super().__init__(
            f"header '{HEADER}: semantic' asks for the semantic cache, which this gateway has not configured "
            "(cache.semantic.embedding_model); send 'on' for the exact cache"
        )


@dataclass(frozen=True)
class Decision:
    """What the cache does for one call: `lookup` (then store), `refresh` (store only) or `bypass`."""

    action: str
    ttl_s: float = 0.0
    semantic: bool = False


BYPASS = Decision("bypass")


class CachePolicy:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.semantic_configured = config.semantic.embedding_model is not None

    def rule(self, model: str, feature: str | None) -> CacheRuleConfig | None:
        for rule in self.config.rules:
            if (rule.model is None or rule.model == model) and (rule.feature is None or rule.feature == feature):
                return rule
        return None

    def decide(
        self, operation: str, model: str, feature: str | None, temperature: float | None, header: str | None
    ) -> Decision:
        """Raises `CacheHeaderInvalid` or `SemanticNotConfigured` for a header the client must fix.

        `temperature`: what the call asked for (None: the provider's default)."""
        asked = header.strip().lower() if header is not None else None
        if asked is not None and asked not in HEADER_VALUES:
            raise CacheHeaderInvalid(header or "")
        if asked == "semantic" and not self.semantic_configured:
            raise SemanticNotConfigured()
        rule = self.rule(model, feature)
        if asked == "off" or (rule is not None and not rule.enabled):
            return BYPASS
        forced = asked in ("on", "semantic", "refresh")
        if not forced and (self.config.default == "off" or not self._deterministic(operation, temperature)):
            return BYPASS
        ttl_s = rule.ttl_s if rule is not None and rule.ttl_s is not None else self.config.ttl_s
        wants_semantic = asked == "semantic" or (rule is not None and bool(rule.semantic))
        semantic = wants_semantic and operation != "embeddings" and asked != "refresh"
        return Decision("refresh" if asked == "refresh" else "lookup", ttl_s, semantic)

    def _deterministic(self, operation: str, temperature: float | None) -> bool:
        limit = self.config.max_temperature
        if operation == "embeddings" or limit is None:
            return True
        return (PROVIDER_DEFAULT_TEMPERATURE if temperature is None else temperature) <= limit
