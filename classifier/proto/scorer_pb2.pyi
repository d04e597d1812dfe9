from . import classification_pb2 as _classification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ACCEPT: _ClassVar[Verdict]
    VERDICT_QUARANTINE: _ClassVar[Verdict]

class Label(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_UNSPECIFIED: _ClassVar[Label]
    LABEL_SPAM: _ClassVar[Label]
    LABEL_HAM: _ClassVar[Label]

class LearnSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARN_SOURCE_UNSPECIFIED: _ClassVar[LearnSource]
    LEARN_SOURCE_RELEASE: _ClassVar[LearnSource]
    LEARN_SOURCE_REPORT: _ClassVar[LearnSource]
    LEARN_SOURCE_TRAINING: _ClassVar[LearnSource]
    LEARN_SOURCE_TRAP: _ClassVar[LearnSource]

class LearnOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARN_OUTCOME_UNSPECIFIED: _ClassVar[LearnOutcome]
    LEARN_OUTCOME_LEARNED: _ClassVar[LearnOutcome]
    LEARN_OUTCOME_NOOP: _ClassVar[LearnOutcome]
    LEARN_OUTCOME_RELEARNED: _ClassVar[LearnOutcome]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ACCEPT: Verdict
VERDICT_QUARANTINE: Verdict
LABEL_UNSPECIFIED: Label
LABEL_SPAM: Label
LABEL_HAM: Label
LEARN_SOURCE_UNSPECIFIED: LearnSource
LEARN_SOURCE_RELEASE: LearnSource
LEARN_SOURCE_REPORT: LearnSource
LEARN_SOURCE_TRAINING: LearnSource
LEARN_SOURCE_TRAP: LearnSource
LEARN_OUTCOME_UNSPECIFIED: LearnOutcome
LEARN_OUTCOME_LEARNED: LearnOutcome
LEARN_OUTCOME_NOOP: LearnOutcome
LEARN_OUTCOME_RELEARNED: LearnOutcome

class Envelope(_message.Message):
    __slots__ = ("client_ip", "helo", "mail_from", "rcpt_to", "authenticated")
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    HELO_FIELD_NUMBER: _ClassVar[int]
    MAIL_FROM_FIELD_NUMBER: _ClassVar[int]
    RCPT_TO_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    client_ip: str
    helo: str
    mail_from: str
    rcpt_to: _containers.RepeatedScalarFieldContainer[str]
    authenticated: bool
    def __init__(self, client_ip: _Optional[str] = ..., helo: _Optional[str] = ..., mail_from: _Optional[str] = ..., rcpt_to: _Optional[_Iterable[str]] = ..., authenticated: _Optional[bool] = ...) -> None: ...

class GateFacts(_message.Message):
    __slots__ = ("spf", "dkim", "dmarc", "dnsbl", "dnswl", "helo_invalid", "ptr")
    SPF_FIELD_NUMBER: _ClassVar[int]
    DKIM_FIELD_NUMBER: _ClassVar[int]
    DMARC_FIELD_NUMBER: _ClassVar[int]
    DNSBL_FIELD_NUMBER: _ClassVar[int]
    DNSWL_FIELD_NUMBER: _ClassVar[int]
    HELO_INVALID_FIELD_NUMBER: _ClassVar[int]
    PTR_FIELD_NUMBER: _ClassVar[int]
    spf: str
    dkim: str
    dmarc: str
    dnsbl: _containers.RepeatedScalarFieldContainer[str]
    dnswl: _containers.RepeatedScalarFieldContainer[str]
    helo_invalid: bool
    ptr: str
    def __init__(self, spf: _Optional[str] = ..., dkim: _Optional[str] = ..., dmarc: _Optional[str] = ..., dnsbl: _Optional[_Iterable[str]] = ..., dnswl: _Optional[_Iterable[str]] = ..., helo_invalid: _Optional[bool] = ..., ptr: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("message", "envelope", "facts", "settings_id", "threshold", "evidence", "request_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    envelope: Envelope
    facts: GateFacts
    settings_id: str
    threshold: float
    evidence: int
    request_id: str
    def __init__(self, message: _Optional[bytes] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ..., facts: _Optional[_Union[GateFacts, _Mapping]] = ..., settings_id: _Optional[str] = ..., threshold: _Optional[float] = ..., evidence: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class Clue(_message.Message):
    __slots__ = ("feature", "weight")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    weight: float
    def __init__(self, feature: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ClassifierScore(_message.Message):
    __slots__ = ("classification", "p_spam", "logodds", "weight", "contribution", "evidence", "abstained", "reason", "decided_alone")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    P_SPAM_FIELD_NUMBER: _ClassVar[int]
    LOGODDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ABSTAINED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_ALONE_FIELD_NUMBER: _ClassVar[int]
    classification: _classification_pb2.Classification
    p_spam: float
    logodds: float
    weight: float
    contribution: float
    evidence: _containers.RepeatedCompositeFieldContainer[Clue]
    abstained: bool
    reason: str
    decided_alone: bool
    def __init__(self, classification: _Optional[_Union[_classification_pb2.Classification, str]] = ..., p_spam: _Optional[float] = ..., logodds: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ..., evidence: _Optional[_Iterable[_Union[Clue, _Mapping]]] = ..., abstained: _Optional[bool] = ..., reason: _Optional[str] = ..., decided_alone: _Optional[bool] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("score", "verdict", "classification", "reply", "threshold", "classifiers", "facts", "model_version", "elapsed_ms", "digest", "gave_up", "request_id", "reputation", "reply_args")
    class ReplyArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    GAVE_UP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    REPLY_ARGS_FIELD_NUMBER: _ClassVar[int]
    score: float
    verdict: Verdict
    classification: _classification_pb2.Classification
    reply: str
    threshold: float
    classifiers: _containers.RepeatedCompositeFieldContainer[ClassifierScore]
    facts: _containers.RepeatedCompositeFieldContainer[Clue]
    model_version: str
    elapsed_ms: float
    digest: str
    gave_up: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    reputation: _containers.RepeatedCompositeFieldContainer[ReputationFinding]
    reply_args: _containers.ScalarMap[str, str]
    def __init__(self, score: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., classification: _Optional[_Union[_classification_pb2.Classification, str]] = ..., reply: _Optional[str] = ..., threshold: _Optional[float] = ..., classifiers: _Optional[_Iterable[_Union[ClassifierScore, _Mapping]]] = ..., facts: _Optional[_Iterable[_Union[Clue, _Mapping]]] = ..., model_version: _Optional[str] = ..., elapsed_ms: _Optional[float] = ..., digest: _Optional[str] = ..., gave_up: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., reputation: _Optional[_Iterable[_Union[ReputationFinding, _Mapping]]] = ..., reply_args: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReputationFinding(_message.Message):
    __slots__ = ("check", "classification", "strength", "weight", "contribution", "decided_alone", "evidence")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_ALONE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    check: str
    classification: _classification_pb2.Classification
    strength: float
    weight: float
    contribution: float
    decided_alone: bool
    evidence: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, check: _Optional[str] = ..., classification: _Optional[_Union[_classification_pb2.Classification, str]] = ..., strength: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ..., decided_alone: _Optional[bool] = ..., evidence: _Optional[_Iterable[str]] = ...) -> None: ...

class LearnRequest(_message.Message):
    __slots__ = ("message", "label", "source", "who", "classifiers", "trusted")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    label: Label
    source: LearnSource
    who: str
    classifiers: _containers.RepeatedScalarFieldContainer[_classification_pb2.Classification]
    trusted: bool
    def __init__(self, message: _Optional[bytes] = ..., label: _Optional[_Union[Label, str]] = ..., source: _Optional[_Union[LearnSource, str]] = ..., who: _Optional[str] = ..., classifiers: _Optional[_Iterable[_Union[_classification_pb2.Classification, str]]] = ..., trusted: _Optional[bool] = ...) -> None: ...

class LearnReply(_message.Message):
    __slots__ = ("outcome", "digest", "audit_id", "classifiers")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    outcome: LearnOutcome
    digest: str
    audit_id: int
    classifiers: _containers.RepeatedScalarFieldContainer[_classification_pb2.Classification]
    def __init__(self, outcome: _Optional[_Union[LearnOutcome, str]] = ..., digest: _Optional[str] = ..., audit_id: _Optional[int] = ..., classifiers: _Optional[_Iterable[_Union[_classification_pb2.Classification, str]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("message", "facts", "per_classifier")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    PER_CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    facts: GateFacts
    per_classifier: int
    def __init__(self, message: _Optional[bytes] = ..., facts: _Optional[_Union[GateFacts, _Mapping]] = ..., per_classifier: _Optional[int] = ...) -> None: ...

class ClassifierExplanation(_message.Message):
    __slots__ = ("classification", "p_spam", "for_spam", "for_ham", "abstained", "reason")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    P_SPAM_FIELD_NUMBER: _ClassVar[int]
    FOR_SPAM_FIELD_NUMBER: _ClassVar[int]
    FOR_HAM_FIELD_NUMBER: _ClassVar[int]
    ABSTAINED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    classification: _classification_pb2.Classification
    p_spam: float
    for_spam: _containers.RepeatedCompositeFieldContainer[Clue]
    for_ham: _containers.RepeatedCompositeFieldContainer[Clue]
    abstained: bool
    reason: str
    def __init__(self, classification: _Optional[_Union[_classification_pb2.Classification, str]] = ..., p_spam: _Optional[float] = ..., for_spam: _Optional[_Iterable[_Union[Clue, _Mapping]]] = ..., for_ham: _Optional[_Iterable[_Union[Clue, _Mapping]]] = ..., abstained: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ExplainReply(_message.Message):
    __slots__ = ("score", "classifiers", "model_version", "digest")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    score: float
    classifiers: _containers.RepeatedCompositeFieldContainer[ClassifierExplanation]
    model_version: str
    digest: str
    def __init__(self, score: _Optional[float] = ..., classifiers: _Optional[_Iterable[_Union[ClassifierExplanation, _Mapping]]] = ..., model_version: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadReply(_message.Message):
    __slots__ = ("model_version", "changed")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    changed: bool
    def __init__(self, model_version: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...
