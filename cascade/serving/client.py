"""A small Python client for the Recommender service."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.config import AppConfig, TLSConfig
from cascade.core.privacy import Pseudonym
from cascade.serving.api import recommender_pb2 as pb
from cascade.serving.api import recommender_pb2_grpc as pb_grpc
from cascade.serving.tls import channel_credentials

EVENT_TYPES = {
    "view": pb.EVENT_TYPE_VIEW,
    "click": pb.EVENT_TYPE_CLICK,
    "rate": pb.EVENT_TYPE_RATE,
    "purchase": pb.EVENT_TYPE_PURCHASE,
}


API_KEY_ENVIRONMENT = "CASCADE_API_KEY"


class _WithKey(grpc.UnaryUnaryClientInterceptor):
    """Puts the API key in every call's metadata."""

    def __init__(self, key: str):
        self.metadata = ("authorization", f"Bearer {key}")

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = [*(client_call_details.metadata or ()), self.metadata]
        return continuation(client_call_details._replace(metadata=metadata), request)


class CascadeClient:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        timeout_s: float = 5.0,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
    ):
        """``api_key``: sent with every call (default: the CASCADE_API_KEY environment variable); ``tls``:
        connect with TLS as its client side says (``serving.tls``), when it says to."""
        self.target = target
        self.timeout_s = timeout_s
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENVIRONMENT)
        if tls is not None and tls.client_uses:
            options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
            self._channel = grpc.secure_channel(target, channel_credentials(tls), options=options)
        else:
            self._channel = grpc.insecure_channel(target)
        if api_key:
            self._channel = grpc.intercept_channel(self._channel, _WithKey(api_key))
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._admin = pb_grpc.CatalogueAdminStub(self._channel)
        self._guard = pb_grpc.GuardAdminStub(self._channel)
        self._privacy = pb_grpc.PrivacyAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def for_config(
        cls, config: AppConfig, target: str | None = None, timeout_s: float = 5.0
    ) -> CascadeClient:
        """A client of the configured service (``target`` overrides serving.host:port), with its TLS."""
        serving = config.serving
        return cls(target or f"{serving.host}:{serving.port}", timeout_s, tls=serving.tls)

    def recommend(
        self,
        user_id: str | int,
        k: int = 10,
        exclude_item_ids: list[str | int] | tuple = (),
        request_id: str = "",
        gender: str = "",
        age: int = 0,
        occupation: str = "",
        zip_code: str = "",
        budget_ms: int = 0,
        timeout_s: float | None = None,
        explain: bool = False,
        surface: str = "",
        timestamp: int = 0,
        include_genres: list[str] | tuple = (),
        exclude_genres: list[str] | tuple = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.RecommendResponse:
        """``timeout_s``: this call's deadline (default: the client's); ``explain``: ask why each item is
        where it is; ``page_size`` and ``page_token``: one page of a paged list (the response's
        next_page_token asks for the next)."""
        request = pb.RecommendRequest(
            user_id=str(user_id),
            k=k,
            exclude_item_ids=[str(i) for i in exclude_item_ids],
            request_id=request_id,
            demographics=pb.Demographics(gender=gender, age=age, occupation=occupation, zip_code=zip_code),
            budget_ms=budget_ms,
            explain=explain,
            surface=surface,
            timestamp=timestamp,
            include_genres=list(include_genres),
            exclude_genres=list(exclude_genres),
            page_size=page_size,
            page_token=page_token,
        )
        return self._stub.Recommend(request, timeout=self.timeout_s if timeout_s is None else timeout_s)

    def similar_items(
        self,
        item_id: str | int,
        k: int = 10,
        request_id: str = "",
        exclude_item_ids: list[str | int] | tuple = (),
        include_genres: list[str] | tuple = (),
        exclude_genres: list[str] | tuple = (),
        surface: str = "",
        explain: bool = False,
    ) -> pb.SimilarItemsResponse:
        request = pb.SimilarItemsRequest(
            item_id=str(item_id),
            k=k,
            request_id=request_id,
            exclude_item_ids=[str(i) for i in exclude_item_ids],
            include_genres=list(include_genres),
            exclude_genres=list(exclude_genres),
            surface=surface,
            explain=explain,
        )
        return self._stub.SimilarItems(request, timeout=self.timeout_s)

    def record_event(
        self,
        user_id: str | int,
        item_id: str | int,
        event_type: str | int = "view",
        timestamp: int = 0,
        event_id: str = "",
        rating: float = 0.0,
    ) -> pb.RecordEventResponse:
        """``event_id``: an idempotency key, so that a retry is recorded once; ``rating``: a RATE's value."""
        code = EVENT_TYPES[event_type] if isinstance(event_type, str) else event_type
        request = pb.RecordEventRequest(
            user_id=str(user_id),
            item_id=str(item_id),
            event_type=code,
            timestamp=timestamp,
            event_id=event_id,
            rating=rating,
        )
        return self._stub.RecordEvent(request, timeout=self.timeout_s)

    def customer_profile(self, user_id: str | int) -> pb.CustomerProfile:
        """Recommender.GetCustomerProfile: the customer's demographics, value, genres and recent items."""
        request = pb.CustomerProfileRequest(user_id=str(user_id))
        return self._stub.GetCustomerProfile(request, timeout=self.timeout_s)

    def upsert_item(
        self,
        item_id: str | int,
        title: str = "",
        genres: list[str] | tuple = (),
        year: int = 0,
        attributes: dict[str, str] | None = None,
        request_id: str = "",
    ) -> pb.UpsertItemResponse:
        """CatalogueAdmin.UpsertItem: add an item, or replace an item's content."""
        request = pb.UpsertItemRequest(
            item_id=str(item_id),
            title=title,
            genres=list(genres),
            year=year,
            attributes=attributes or {},
            request_id=request_id,
        )
        return self._admin.UpsertItem(request, timeout=self.timeout_s)

    def delete_item(self, item_id: str | int, request_id: str = "") -> pb.DeleteItemResponse:
        """CatalogueAdmin.DeleteItem: never serve the item again."""
        request = pb.DeleteItemRequest(item_id=str(item_id), request_id=request_id)
        return self._admin.DeleteItem(request, timeout=self.timeout_s)

    def guard_flags(self, limit: int = 100) -> pb.ListFlagsResponse:
        """GuardAdmin.ListFlags: the flagged and blocked users, the latest first."""
        return self._guard.ListFlags(pb.ListFlagsRequest(limit=limit), timeout=self.timeout_s)

    def clear_user(self, user: str | int | Pseudonym, discard: bool = False) -> pb.GuardUserResponse:
        """GuardAdmin.ClearUser: lift the user's flag or block (an id, or a ``Pseudonym`` as ListFlags
        gives it), releasing (or discarding) the quarantine."""
        request = _guard_request(user, discard_quarantined=discard)
        return self._guard.ClearUser(request, timeout=self.timeout_s)

    def block_user(self, user: str | int | Pseudonym, reason: str) -> pb.GuardUserResponse:
        """GuardAdmin.BlockUser: refuse the user's events until cleared."""
        return self._guard.BlockUser(_guard_request(user, reason=reason), timeout=self.timeout_s)

    def forget_user(self, user_id: str | int) -> pb.ForgetUserResponse:
        """PrivacyAdmin.ForgetUser: delete what the service holds of the user and deny-list them."""
        request = pb.ForgetUserRequest(user_id=str(user_id))
        return self._privacy.ForgetUser(request, timeout=self.timeout_s)

    def health(self, service: str = "") -> str:
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(
        self, timeout_s: float = 60.0, check: Callable[[], None] | None = None, poll_s: float = 0.2
    ) -> None:
        """Block until health says SERVING; ``check`` runs before each probe and may raise to give up
        early (e.g. when the server's process has exited)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if check is not None:
                check()
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target} not SERVING after {timeout_s}s")
            time.sleep(poll_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CascadeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _guard_request(user: str | int | Pseudonym, **fields) -> pb.GuardUserRequest:
    if isinstance(user, Pseudonym):
        return pb.GuardUserRequest(pseudonym=str(user), **fields)
    return pb.GuardUserRequest(user_id=str(user), **fields)
