"""JSON versions of Django's error pages (see handler400... in signup.urls)."""

from django.http import HttpRequest, JsonResponse


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    # Django sends here what it refuses before a view runs: a Host header
    # outside ALLOWED_HOSTS, a malformed request (SuspiciousOperation).
    del request, exception  # the details stay in the log, not in the answer
    return JsonResponse({"error": "bad request"}, status=400)


def forbidden(request: HttpRequest, exception: Exception) -> JsonResponse:
    del request, exception
    return JsonResponse({"error": "forbidden"}, status=403)


def not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    del exception
    return JsonResponse({"error": f"no such endpoint: {request.path}"}, status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    del request
    return JsonResponse({"error": "internal error"}, status=500)
