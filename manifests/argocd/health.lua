-- Argo CD health of a qatvm.io/QatVirtualMachine, read from the conditions the operator
-- writes (they follow kstatus: Ready, Reconciling, Stalled, plus DevicesHealthy).
-- Without this check Argo CD calls a VM Healthy the moment it exists.
local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function said(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status or {}
local conditions = status.conditions or {}
local ready = condition(conditions, "Ready")

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted: the domain is removed and its VFs given back"
  return hs
end

-- The controller's writes (placement, no room) carry the generation on each condition only;
-- the agent's also set status.observedGeneration.
local observed = status.observedGeneration
if observed == nil then
  for _, c in ipairs(conditions) do
    if c.observedGeneration ~= nil and (observed == nil or c.observedGeneration > observed) then
      observed = c.observedGeneration
    end
  end
end
if observed ~= nil and observed < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local stalled = condition(conditions, "Stalled")
if (stalled ~= nil and stalled.status == "True") or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said(stalled, said(ready, "the VM failed"))
  return hs
end

local devices = condition(conditions, "DevicesHealthy")
if devices ~= nil and devices.status == "False" then
  hs.status = "Degraded"
  hs.message = said(devices, "a VF of this VM is missing or unhealthy")
  return hs
end

if ready ~= nil and ready.status == "True" then
  local running = true
  if obj.spec ~= nil and obj.spec.running == false then
    running = false
  end
  if not running and status.phase == "Stopped" then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = said(ready, status.phase or "ready")
  return hs
end

hs.status = "Progressing"
hs.message = said(condition(conditions, "Reconciling"), said(ready, "waiting for the operator"))
return hs
