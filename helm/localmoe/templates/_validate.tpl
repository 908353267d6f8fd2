{{/*
Combinations that cannot work are refused when the chart renders, with what to change, rather
than discovered later as a pod that never starts (helm/README.md, "What the chart refuses").
*/}}
{{- define "localmoe.validate" -}}
{{- $v := .Values }}
{{- $keys := list }}
{{- if include "localmoe.jwtSecretName" . }}{{ $keys = append $keys "auth.jwtSecret" }}{{ end }}
{{- if or $v.auth.publicKey.existingSecret $v.auth.publicKey.pem }}{{ $keys = append $keys "auth.publicKey" }}{{ end }}
{{- if $v.auth.jwksUrl }}{{ $keys = append $keys "auth.jwksUrl" }}{{ end }}
{{- if $v.auth.jwksUrlSecret.existingSecret }}{{ $keys = append $keys "auth.jwksUrlSecret" }}{{ end }}
{{- if $v.auth.jwksFile.existingSecret }}{{ $keys = append $keys "auth.jwksFile" }}{{ end }}
{{- if gt (len $keys) 1 }}
{{- fail (printf "localmoe: configure at most one JWT key source; got %s" (join ", " $keys)) }}
{{- end }}
{{- if and (eq $v.mode "production") $v.auth.enabled (eq (len $keys) 0) }}
{{- fail "localmoe: mode=production needs a JWT key (the gateway refuses to start without one): set auth.jwksUrl, auth.jwksUrlSecret, auth.jwksFile.existingSecret, auth.publicKey, auth.jwtSecret.existingSecret or auth.jwtSecret.create=true" }}
{{- end }}
{{- if and $v.auth.metrics (ne $v.monitoring.kind "none") (not $v.monitoring.bearerTokenSecret.name) }}
{{- fail "localmoe: auth.metrics=true puts /metrics behind a token: set monitoring.bearerTokenSecret.name (a Secret with a token the gateway accepts) so that Prometheus can scrape it" }}
{{- end }}
{{- $max := int (include "localmoe.tritonMaxReplicas" .) }}
{{- if and (eq $v.triton.profile "gpu") (eq $v.triton.modelStorage.accessMode "ReadWriteOnce") (gt $max 1) }}
{{- fail (printf "localmoe: triton.modelStorage.accessMode=ReadWriteOnce can be mounted by one pod only, but up to %d Triton pods may run (triton.replicas / triton.autoscaling.maxReplicas): use a ReadWriteMany or ReadOnlyMany claim, or one replica" $max) }}
{{- end }}
{{- if and (eq $v.triton.profile "gpu") (eq (include "localmoe.tokenizerSource" .) "modelVolume") (eq $v.triton.modelStorage.accessMode "ReadWriteOnce") }}
{{- fail "localmoe: the gateway reads the tokenizer from the model volume (gateway.tokenizer.source), which a ReadWriteOnce claim cannot share with the Triton pod: use a ReadWriteMany or ReadOnlyMany claim, or gateway.tokenizer.source=none with your own volume" }}
{{- end }}
{{- if and (eq $v.triton.profile "gpu") (gt (int $v.triton.gpu.tensorParallel) 1) (not $v.triton.gpu.shm.enabled) }}
{{- fail (printf "localmoe: triton.gpu.tensorParallel=%d needs triton.gpu.shm.enabled=true: NCCL between the ranks uses /dev/shm, and the container runtime's 64 MiB default hangs or crashes them" (int $v.triton.gpu.tensorParallel)) }}
{{- end }}
{{- if and (eq $v.triton.profile "cpu") (eq $v.gateway.tokenizer.source "modelVolume") }}
{{- fail "localmoe: gateway.tokenizer.source=modelVolume needs triton.profile=gpu (the cpu profile has no model volume; use auto or image)" }}
{{- end }}
{{- if and $v.triton.autoscaling.enabled $v.triton.autoscaling.keda.enabled }}
{{- fail "localmoe: triton.autoscaling.enabled and triton.autoscaling.keda.enabled both scale Triton (KEDA makes an HPA of its own): choose one" }}
{{- end }}
{{- if and (eq $v.redis.mode "external") (not $v.redis.external.existingSecret) (not $v.redis.external.url) }}
{{- fail "localmoe: redis.mode=external needs redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if and $v.gateway.autoscaling.enabled (not $v.gateway.autoscaling.targetCPUUtilizationPercentage) (not $v.gateway.autoscaling.targetInFlightRequests) }}
{{- fail "localmoe: gateway.autoscaling needs targetCPUUtilizationPercentage or targetInFlightRequests" }}
{{- end }}
{{- if and $v.triton.autoscaling.enabled (not $v.triton.autoscaling.targetWaitingRequests) (not $v.triton.autoscaling.targetQueueComputeRatio) }}
{{- fail "localmoe: triton.autoscaling needs targetWaitingRequests or targetQueueComputeRatio" }}
{{- end }}
{{- end }}
