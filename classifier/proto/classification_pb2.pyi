from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_CONNECT: _ClassVar[Phase]
    PHASE_HELO: _ClassVar[Phase]
    PHASE_AUTH: _ClassVar[Phase]
    PHASE_MAIL: _ClassVar[Phase]
    PHASE_RCPT: _ClassVar[Phase]
    PHASE_DATA: _ClassVar[Phase]
    PHASE_DELIVERY: _ClassVar[Phase]
    PHASE_ANY: _ClassVar[Phase]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_TEMPFAIL: _ClassVar[Action]
    ACTION_REJECT: _ClassVar[Action]
    ACTION_QUARANTINE: _ClassVar[Action]
    ACTION_ACCEPT: _ClassVar[Action]
    ACTION_DISCARD: _ClassVar[Action]
    ACTION_BOUNCE: _ClassVar[Action]

class Release(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELEASE_NOT_APPLICABLE: _ClassVar[Release]
    RELEASE_DELIVER: _ClassVar[Release]
    RELEASE_LEARN: _ClassVar[Release]

class Whitelist(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WHITELIST_NOT_APPLICABLE: _ClassVar[Whitelist]
    WHITELIST_BYPASSES: _ClassVar[Whitelist]
    WHITELIST_DOES_NOT_BYPASS: _ClassVar[Whitelist]

class Classification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_UNSPECIFIED: _ClassVar[Classification]
    CLASSIFICATION_GREYLISTED: _ClassVar[Classification]
    CLASSIFICATION_AUTH_DENIED: _ClassVar[Classification]
    CLASSIFICATION_DESTINATION_UNVERIFIED: _ClassVar[Classification]
    CLASSIFICATION_INTERNAL_ERROR: _ClassVar[Classification]
    CLASSIFICATION_SENDER_RATE_LIMIT: _ClassVar[Classification]
    CLASSIFICATION_IP_RATE_LIMIT: _ClassVar[Classification]
    CLASSIFICATION_IP_CONCURRENCY_LIMIT: _ClassVar[Classification]
    CLASSIFICATION_OUTGOING_QUOTA: _ClassVar[Classification]
    CLASSIFICATION_SPLIT_DELIVERY: _ClassVar[Classification]
    CLASSIFICATION_LINE_TOO_LONG: _ClassVar[Classification]
    CLASSIFICATION_TOO_MANY_MIME_PARTS: _ClassVar[Classification]
    CLASSIFICATION_INVALID_HELO: _ClassVar[Classification]
    CLASSIFICATION_CONSIDERED_SPAM: _ClassVar[Classification]
    CLASSIFICATION_SPF_FAIL: _ClassVar[Classification]
    CLASSIFICATION_PYZOR: _ClassVar[Classification]
    CLASSIFICATION_SENDER_MISSING_DNS: _ClassVar[Classification]
    CLASSIFICATION_DESTINATION_DOES_NOT_EXIST: _ClassVar[Classification]
    CLASSIFICATION_PHISHING: _ClassVar[Classification]
    CLASSIFICATION_DATE_SKEW: _ClassVar[Classification]
    CLASSIFICATION_BAD_HEADER_COUNT: _ClassVar[Classification]
    CLASSIFICATION_IP_BLACKLISTED: _ClassVar[Classification]
    CLASSIFICATION_DNSBL_MULTIPLE: _ClassVar[Classification]
    CLASSIFICATION_TOO_MANY_INVALID_RECIPIENTS: _ClassVar[Classification]
    CLASSIFICATION_SENDER_BLACKLISTED: _ClassVar[Classification]
    CLASSIFICATION_URLBL: _ClassVar[Classification]
    CLASSIFICATION_UCEPP: _ClassVar[Classification]
    CLASSIFICATION_EXTERNAL_PATTERN: _ClassVar[Classification]
    CLASSIFICATION_BLACKHOLE: _ClassVar[Classification]
    CLASSIFICATION_COMBINED_SCORE: _ClassVar[Classification]
    CLASSIFICATION_CRM114: _ClassVar[Classification]
    CLASSIFICATION_SUBJECT_INVALID_CHARS: _ClassVar[Classification]
    CLASSIFICATION_GLOBAL_TOKENS: _ClassVar[Classification]
    CLASSIFICATION_CLUSTER_TOKENS: _ClassVar[Classification]
    CLASSIFICATION_SIGNATURE_MATCH: _ClassVar[Classification]
    CLASSIFICATION_SAFEBROWSING: _ClassVar[Classification]
    CLASSIFICATION_HEADER_TOO_LONG: _ClassVar[Classification]
    CLASSIFICATION_RESTRICTED_ADDRESS_CHARS: _ClassVar[Classification]
    CLASSIFICATION_RELAY_NOT_PERMITTED: _ClassVar[Classification]
    CLASSIFICATION_SUBMISSION_AUTH_REQUIRED: _ClassVar[Classification]
    CLASSIFICATION_NULL_SENDER_MULTIPLE_RCPT: _ClassVar[Classification]
    CLASSIFICATION_DESTINATION_NOT_CONFIGURED: _ClassVar[Classification]
    CLASSIFICATION_CONTENT_SPAM: _ClassVar[Classification]
    CLASSIFICATION_UNROUTEABLE: _ClassVar[Classification]
    CLASSIFICATION_DOMAIN_SENDER_BLACKLISTED: _ClassVar[Classification]
    CLASSIFICATION_MESSAGE_PARTIAL: _ClassVar[Classification]
    CLASSIFICATION_DMARC_REJECT: _ClassVar[Classification]
    CLASSIFICATION_DMARC_QUARANTINE: _ClassVar[Classification]
    CLASSIFICATION_NOT_SPAM: _ClassVar[Classification]
    CLASSIFICATION_DNSWL: _ClassVar[Classification]
    CLASSIFICATION_WHITELISTED: _ClassVar[Classification]
PHASE_UNSPECIFIED: Phase
PHASE_CONNECT: Phase
PHASE_HELO: Phase
PHASE_AUTH: Phase
PHASE_MAIL: Phase
PHASE_RCPT: Phase
PHASE_DATA: Phase
PHASE_DELIVERY: Phase
PHASE_ANY: Phase
ACTION_UNSPECIFIED: Action
ACTION_TEMPFAIL: Action
ACTION_REJECT: Action
ACTION_QUARANTINE: Action
ACTION_ACCEPT: Action
ACTION_DISCARD: Action
ACTION_BOUNCE: Action
RELEASE_NOT_APPLICABLE: Release
RELEASE_DELIVER: Release
RELEASE_LEARN: Release
WHITELIST_NOT_APPLICABLE: Whitelist
WHITELIST_BYPASSES: Whitelist
WHITELIST_DOES_NOT_BYPASS: Whitelist
CLASSIFICATION_UNSPECIFIED: Classification
CLASSIFICATION_GREYLISTED: Classification
CLASSIFICATION_AUTH_DENIED: Classification
CLASSIFICATION_DESTINATION_UNVERIFIED: Classification
CLASSIFICATION_INTERNAL_ERROR: Classification
CLASSIFICATION_SENDER_RATE_LIMIT: Classification
CLASSIFICATION_IP_RATE_LIMIT: Classification
CLASSIFICATION_IP_CONCURRENCY_LIMIT: Classification
CLASSIFICATION_OUTGOING_QUOTA: Classification
CLASSIFICATION_SPLIT_DELIVERY: Classification
CLASSIFICATION_LINE_TOO_LONG: Classification
CLASSIFICATION_TOO_MANY_MIME_PARTS: Classification
CLASSIFICATION_INVALID_HELO: Classification
CLASSIFICATION_CONSIDERED_SPAM: Classification
CLASSIFICATION_SPF_FAIL: Classification
CLASSIFICATION_PYZOR: Classification
CLASSIFICATION_SENDER_MISSING_DNS: Classification
CLASSIFICATION_DESTINATION_DOES_NOT_EXIST: Classification
CLASSIFICATION_PHISHING: Classification
CLASSIFICATION_DATE_SKEW: Classification
CLASSIFICATION_BAD_HEADER_COUNT: Classification
CLASSIFICATION_IP_BLACKLISTED: Classification
CLASSIFICATION_DNSBL_MULTIPLE: Classification
CLASSIFICATION_TOO_MANY_INVALID_RECIPIENTS: Classification
CLASSIFICATION_SENDER_BLACKLISTED: Classification
CLASSIFICATION_URLBL: Classification
CLASSIFICATION_UCEPP: Classification
CLASSIFICATION_EXTERNAL_PATTERN: Classification
CLASSIFICATION_BLACKHOLE: Classification
CLASSIFICATION_COMBINED_SCORE: Classification
CLASSIFICATION_CRM114: Classification
CLASSIFICATION_SUBJECT_INVALID_CHARS: Classification
CLASSIFICATION_GLOBAL_TOKENS: Classification
CLASSIFICATION_CLUSTER_TOKENS: Classification
CLASSIFICATION_SIGNATURE_MATCH: Classification
CLASSIFICATION_SAFEBROWSING: Classification
CLASSIFICATION_HEADER_TOO_LONG: Classification
CLASSIFICATION_RESTRICTED_ADDRESS_CHARS: Classification
CLASSIFICATION_RELAY_NOT_PERMITTED: Classification
CLASSIFICATION_SUBMISSION_AUTH_REQUIRED: Classification
CLASSIFICATION_NULL_SENDER_MULTIPLE_RCPT: Classification
CLASSIFICATION_DESTINATION_NOT_CONFIGURED: Classification
CLASSIFICATION_CONTENT_SPAM: Classification
CLASSIFICATION_UNROUTEABLE: Classification
CLASSIFICATION_DOMAIN_SENDER_BLACKLISTED: Classification
CLASSIFICATION_MESSAGE_PARTIAL: Classification
CLASSIFICATION_DMARC_REJECT: Classification
CLASSIFICATION_DMARC_QUARANTINE: Classification
CLASSIFICATION_NOT_SPAM: Classification
CLASSIFICATION_DNSWL: Classification
CLASSIFICATION_WHITELISTED: Classification
INFO_FIELD_NUMBER: _ClassVar[int]
info: _descriptor.FieldDescriptor

class ClassificationInfo(_message.Message):
    __slots__ = ("id", "name", "phase", "code", "enhanced", "text", "action", "release", "whitelist")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ENHANCED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    phase: Phase
    code: int
    enhanced: str
    text: str
    action: Action
    release: Release
    whitelist: Whitelist
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., code: _Optional[int] = ..., enhanced: _Optional[str] = ..., text: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., release: _Optional[_Union[Release, str]] = ..., whitelist: _Optional[_Union[Whitelist, str]] = ...) -> None: ...
