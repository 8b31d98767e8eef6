"""The gRPC backend of the HTTP/JSON transcoding tests: grpcio serving
`shop.v1.Catalog` (fixtures/grpc/catalog.proto), its message classes made at
run time from the descriptor set, so no generated code. Prints `PORT <n>`
once serving.

usage: catalog_backend.py DESCRIPTOR_SET
"""
import sys
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

POOL = descriptor_pool.DescriptorPool()
with open(sys.argv[1], "rb") as f:
    for file in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file:
        POOL.AddSerializedFile(file.SerializeToString())


def message(name):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName("shop.v1." + name))


Item, Money = message("Item"), message("Money")
GetItemRequest, ListItemsRequest, CreateItemRequest = (
    message("GetItemRequest"), message("ListItemsRequest"), message("CreateItemRequest"))
BOOK = 1


def status(code):
    return next(s for s in grpc.StatusCode if s.value[0] == code)


def echo_client_metadata(context):
    """What the client sent as `x-client` comes back as `x-seen-client`."""
    seen = dict(context.invocation_metadata()).get("x-client", "")
    context.send_initial_metadata((("x-seen-client", seen), ("x-backend", "catalog")))


def get_item(request, context):
    echo_client_metadata(context)
    if request.item_id == 404:
        context.abort(grpc.StatusCode.NOT_FOUND, "no item 404 (gone %)")
    return Item(item_id=request.item_id, name="item-%d" % request.item_id,
                price=Money(currency="USD", cents=request.item_id * 100),
                tags=["new"] if request.with_tags else [], kind=BOOK)


def list_items(request, context):
    for i in range(request.limit or 3):
        yield Item(item_id=i + 1, name="%s-%d" % (request.shelf, i + 1), shelf=request.shelf, tags=request.tags)
    if request.fail_with:
        context.abort(status(request.fail_with), "stream failed on purpose")


def create_item(request, context):
    item = Item()
    item.CopyFrom(request.item)
    item.shelf = request.shelf
    item.item_id = 100
    return item


def update_item(request, context):
    return request


def get_price(request, context):
    return Item(item_id=request.item_id, price=Money(currency="EUR", cents=request.item_id * 10))


def upload(requests, context):
    return Item(name="%d items" % sum(1 for _ in requests))


def main():
    def serialize(item):
        # Item 500 plays a broken backend: bytes that are no protobuf message.
        return b"\xff\xff\xff" if getattr(item, "item_id", 0) == 500 else item.SerializeToString()

    def handler(kind, function, request_type):
        return kind(function, request_deserializer=request_type.FromString, response_serializer=serialize)

    handlers = {
        "GetItem": handler(grpc.unary_unary_rpc_method_handler, get_item, GetItemRequest),
        "ListItems": handler(grpc.unary_stream_rpc_method_handler, list_items, ListItemsRequest),
        "CreateItem": handler(grpc.unary_unary_rpc_method_handler, create_item, CreateItemRequest),
        "UpdateItem": handler(grpc.unary_unary_rpc_method_handler, update_item, Item),
        "GetPrice": handler(grpc.unary_unary_rpc_method_handler, get_price, GetItemRequest),
        "Upload": handler(grpc.stream_unary_rpc_method_handler, upload, Item),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.v1.Catalog", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
